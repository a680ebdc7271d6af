//! `--proxy` URLs (command line, TUN2SOCKS_PROXY, --proxy-file, config):
//! no panic, and the redacted form (what logs show) does not depend on the
//! password at all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tun2socks::proxy::ProxyUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = text.parse::<ProxyUrl>() else {
        return;
    };
    let mut other = url.clone();
    if let Some(c) = &mut other.credentials {
        c.password = format!("{}-other", c.password);
        assert_eq!(url.redacted(), other.redacted(), "the redacted URL shows the password");
    }
});
