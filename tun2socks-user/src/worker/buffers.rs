//! The worker's TCP socket buffers: page-aligned anonymous mappings of
//! their own, recycled through a small per-worker pool.
//!
//! Why not `vec![0; size]`: glibc serves a large `calloc` with a fresh
//! mapping (the daemon fixes its mmap threshold at 128 KiB), but writes its
//! chunk header into the mapping's first page, so every buffer costs a
//! resident page before any data arrives: 8 KiB per idle connection, most
//! of its RSS. And each connection then pays an `mmap` and a `munmap` per
//! buffer; the `munmap` of a page that was touched flushes the TLB of every
//! core running one of our threads (an IPI each), 12 % of a worker's time
//! at a few thousand connections per second.
//!
//! Here a buffer is a mapping of exactly its size with nothing written into
//! it: its pages become resident only as data passes through them. When a
//! socket goes, its buffers return to the pool; pages past the first are
//! given back to the kernel (`MADV_DONTNEED`, which costs no TLB flush when
//! they were never touched, the common case for short connections), so a
//! pooled buffer holds at most one resident page. Beyond [`MAX_POOLED`] free
//! buffers they are unmapped.

use std::collections::HashMap;
use std::ptr::NonNull;

/// Free buffers a worker keeps for reuse. Enough for the connections that
/// close while others open during a burst; each holds at most one resident
/// page, so the pool costs at most 256 KiB of memory per worker.
pub const MAX_POOLED: usize = 64;

/// Smaller buffers (the one-byte buffers of a socket that only sends a
/// reset) come from the heap: a mapping would round them up to a page.
/// A page-sized one is worth mapping: `--buffer-memory` gives most
/// connections 4 KiB buffers once there are thousands, and from the heap
/// each would cost a resident page (calloc's chunk header, or its clearing
/// of reused memory) before any data.
const MIN_MAPPED: usize = PAGE;

const PAGE: usize = 4096;

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    fn map(len: usize) -> Option<Region> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Region {
            ptr: NonNull::new(ptr.cast())?,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns the pages past the first to the kernel: they read as zeros
    /// again and cost no memory until written.
    fn release_tail(&self) {
        if self.len > PAGE {
            // SAFETY: the range lies inside our own mapping, and no socket
            // uses the region while it is being returned to the pool.
            unsafe {
                libc::madvise(self.ptr.as_ptr().add(PAGE).cast(), self.len - PAGE, libc::MADV_DONTNEED);
            }
        }
    }

    /// The region as a slice that a socket can own.
    ///
    /// # Safety
    /// The slice must be gone (the socket holding it dropped) before the
    /// region is dropped or handed out again; nothing else may use the
    /// region meanwhile.
    unsafe fn as_static_slice(&mut self) -> &'static mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and the
        // caller guarantees the slice does not outlive it or alias.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping, and (see `as_static_slice`) no slice of it
        // is left.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A buffer for a socket: the storage smoltcp gets, and the region (if
/// mapped) that must go back to the pool once the socket has been dropped.
pub struct Buffer {
    pub storage: smoltcp::storage::RingBuffer<'static, u8>,
    pub region: Option<Region>,
}

#[derive(Debug, Default)]
pub struct BufferPool {
    free: HashMap<usize, Vec<Region>>,
    pooled: usize,
}

impl BufferPool {
    /// A zeroed buffer of `len` bytes.
    pub fn take(&mut self, len: usize) -> Buffer {
        let region = if len >= MIN_MAPPED {
            match self.free.get_mut(&len).and_then(Vec::pop) {
                Some(region) => {
                    self.pooled -= 1;
                    Some(region)
                }
                None => Region::map(len),
            }
        } else {
            None
        };
        match region {
            Some(mut region) => {
                // SAFETY: the region goes back (`give`) only after the
                // socket owning this slice has been dropped (`Stack`).
                let slice = unsafe { region.as_static_slice() };
                Buffer {
                    storage: smoltcp::storage::RingBuffer::new(slice),
                    region: Some(region),
                }
            }
            // Small, or no mapping to be had: the heap (calloc: untouched
            // pages of a large one still cost nothing).
            None => Buffer {
                storage: smoltcp::storage::RingBuffer::new(vec![0u8; len]),
                region: None,
            },
        }
    }

    /// Takes back a region whose socket has been dropped.
    pub fn give(&mut self, region: Region) {
        if self.pooled >= MAX_POOLED {
            return; // dropped: unmapped
        }
        region.release_tail();
        self.pooled += 1;
        self.free.entry(region.len()).or_default().push(region);
    }

    /// Free buffers held for reuse.
    #[cfg(test)]
    pub fn pooled(&self) -> usize {
        self.pooled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_pages(region: &Region) -> usize {
        let pages = region.len().div_ceil(PAGE);
        let mut vec = vec![0u8; pages];
        // SAFETY: our own mapping, `vec` has one byte per page.
        let rc = unsafe { libc::mincore(region.ptr.as_ptr().cast(), region.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|v| *v & 1 == 1).count()
    }

    #[test]
    fn a_fresh_buffer_holds_no_memory_and_reads_zero() {
        let mut pool = BufferPool::default();
        let mut buffer = pool.take(64 * 1024);
        let region = buffer.region.take().unwrap();
        assert_eq!(resident_pages(&region), 0);
        assert_eq!(buffer.storage.capacity(), 64 * 1024);
        drop(buffer);
        pool.give(region);
        assert_eq!(pool.pooled(), 1);
    }

    #[test]
    fn a_returned_buffer_keeps_at_most_one_page_and_is_reused_zeroed() {
        let mut pool = BufferPool::default();
        let mut buffer = pool.take(64 * 1024);
        // Fill the whole ring, as a bulk transfer would.
        let written = buffer.storage.enqueue_slice(&[0xaa; 64 * 1024]);
        assert_eq!(written, 64 * 1024);
        let region = buffer.region.take().unwrap();
        assert_eq!(resident_pages(&region), 16);
        let addr = region.ptr;
        drop(buffer);
        pool.give(region);
        let mut again = pool.take(64 * 1024);
        let region = again.region.take().unwrap();
        assert_eq!(region.ptr, addr, "the pooled mapping is reused");
        assert!(resident_pages(&region) <= 1);
        // Past the first page, what the last user wrote is gone.
        // SAFETY: reading our own mapping, which no socket writes meanwhile.
        let byte = unsafe { *region.ptr.as_ptr().add(PAGE + 7) };
        assert_eq!(byte, 0);
        drop(again);
        pool.give(region);
    }

    #[test]
    fn the_pool_is_bounded_and_small_buffers_come_from_the_heap() {
        let mut pool = BufferPool::default();
        let mut regions = Vec::new();
        for _ in 0..MAX_POOLED + 5 {
            let mut buffer = pool.take(16 * 1024);
            regions.push(buffer.region.take().unwrap());
        }
        for region in regions {
            pool.give(region);
        }
        assert_eq!(pool.pooled(), MAX_POOLED);
        assert!(pool.take(1).region.is_none());
        assert!(pool.take(PAGE - 1).region.is_none());
        assert!(pool.take(PAGE).region.is_some());
    }
}
