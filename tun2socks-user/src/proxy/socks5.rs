//! SOCKS5 client handshake (RFC 1928 CONNECT, RFC 1929 username/password).
//!
//! Generic over the stream so the whole exchange is unit-tested against an
//! in-memory peer; the daemon runs it over a marked TCP socket.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u8 = 5;
const METHOD_NONE: u8 = 0x00;
const METHOD_USERPASS: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const CMD_UDP_ASSOCIATE: u8 = 0x03;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// RFC 1929 credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Where the proxy should connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    /// A name the proxy resolves itself (ATYP 3).
    Domain(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(addr) => write!(f, "{addr}"),
            Target::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// The reply codes of RFC 1928 §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCode {
    GeneralFailure,
    NotAllowed,
    NetworkUnreachable,
    HostUnreachable,
    ConnectionRefused,
    TtlExpired,
    CommandNotSupported,
    AddressTypeNotSupported,
    Unassigned(u8),
}

impl ReplyCode {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x00 => return None,
            0x01 => Self::GeneralFailure,
            0x02 => Self::NotAllowed,
            0x03 => Self::NetworkUnreachable,
            0x04 => Self::HostUnreachable,
            0x05 => Self::ConnectionRefused,
            0x06 => Self::TtlExpired,
            0x07 => Self::CommandNotSupported,
            0x08 => Self::AddressTypeNotSupported,
            other => Self::Unassigned(other),
        })
    }
}

impl std::fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::GeneralFailure => "general SOCKS server failure",
            Self::NotAllowed => "connection not allowed by ruleset",
            Self::NetworkUnreachable => "network unreachable",
            Self::HostUnreachable => "host unreachable",
            Self::ConnectionRefused => "connection refused",
            Self::TtlExpired => "TTL expired",
            Self::CommandNotSupported => "command not supported",
            Self::AddressTypeNotSupported => "address type not supported",
            Self::Unassigned(code) => return write!(f, "unassigned reply code {code:#04x}"),
        };
        f.write_str(text)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("proxy I/O: {0}")]
    Io(#[from] io::Error),
    #[error("proxy spoke SOCKS version {0}, not 5")]
    BadVersion(u8),
    #[error("proxy accepts none of our authentication methods")]
    NoAcceptableMethod,
    #[error("proxy chose authentication method {0:#04x} that we did not offer")]
    UnexpectedMethod(u8),
    #[error("proxy rejected the username/password")]
    AuthRejected,
    #[error("username or password longer than 255 bytes")]
    CredentialsTooLong,
    #[error("domain name longer than 255 bytes")]
    DomainTooLong,
    #[error("proxy refused: {0}")]
    Refused(ReplyCode),
    #[error("proxy reply has unknown address type {0:#04x}")]
    BadAddressType(u8),
}

/// Asks for a UDP association (RFC 1928 §7). `from` is the address our UDP
/// socket will send from (all zeros if unknown). Returns the relay address
/// the proxy told us to send datagrams to; the association lives as long as
/// `stream` stays open.
pub async fn associate<S>(
    stream: &mut S,
    from: SocketAddr,
    credentials: Option<&Credentials>,
) -> Result<Target, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    associate_with(stream, from, credentials, false).await
}

/// [`associate`], with the request pipelined (see [`connect_with`]).
pub async fn associate_with<S>(
    stream: &mut S,
    from: SocketAddr,
    credentials: Option<&Credentials>,
    pipelined: bool,
) -> Result<Target, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake(stream, CMD_UDP_ASSOCIATE, &Target::Ip(from), credentials, pipelined).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpHeaderError {
    #[error("datagram shorter than its SOCKS5 UDP header")]
    Truncated,
    #[error("fragmented SOCKS5 datagram (FRAG {0})")]
    Fragmented(u8),
    #[error("unknown address type {0:#04x} in a SOCKS5 datagram")]
    BadAddressType(u8),
}

/// Writes the SOCKS5 UDP request header for `target` (RSV, FRAG 0, address).
pub fn encode_udp_header(out: &mut Vec<u8>, target: &Target) -> Result<(), Socks5Error> {
    out.extend_from_slice(&[0, 0, 0]);
    encode_target(out, target)
}

/// Parses the SOCKS5 UDP header of a datagram from the relay: the remote
/// it came from, and where its payload starts. Fragments are refused.
pub fn decode_udp_header(datagram: &[u8]) -> Result<(Target, usize), UdpHeaderError> {
    let [_, _, frag, atyp, rest @ ..] = datagram else {
        return Err(UdpHeaderError::Truncated);
    };
    if *frag != 0 {
        return Err(UdpHeaderError::Fragmented(*frag));
    }
    let port_at = |addr_len: usize| -> Result<u16, UdpHeaderError> {
        let p = rest.get(addr_len..addr_len + 2).ok_or(UdpHeaderError::Truncated)?;
        Ok(u16::from_be_bytes([p[0], p[1]]))
    };
    let (target, header_len) = match *atyp {
        ATYP_IPV4 => {
            let port = port_at(4)?;
            let ip: [u8; 4] = rest[..4].try_into().expect("length checked by port_at");
            (Target::Ip(SocketAddr::new(IpAddr::from(ip), port)), 4 + 4 + 2)
        }
        ATYP_IPV6 => {
            let port = port_at(16)?;
            let ip: [u8; 16] = rest[..16].try_into().expect("length checked by port_at");
            (Target::Ip(SocketAddr::new(IpAddr::from(ip), port)), 4 + 16 + 2)
        }
        ATYP_DOMAIN => {
            let len = usize::from(*rest.first().ok_or(UdpHeaderError::Truncated)?);
            let port = port_at(1 + len)?;
            let name = String::from_utf8_lossy(&rest[1..1 + len]).into_owned();
            (Target::Domain(name, port), 4 + 1 + len + 2)
        }
        other => return Err(UdpHeaderError::BadAddressType(other)),
    };
    Ok((target, header_len))
}

/// Runs the greeting, optional authentication and CONNECT on `stream`,
/// returning the address the proxy bound for us.
pub async fn connect<S>(
    stream: &mut S,
    target: &Target,
    credentials: Option<&Credentials>,
) -> Result<Target, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connect_with(stream, target, credentials, false).await
}

/// [`connect`]; with `pipelined`, the request does not wait for the answer
/// before it:
///
/// - without credentials we offer only "no authentication", so the request
///   follows the greeting in the same write (one round trip fewer): a
///   proxy that refuses the method closes the connection and never reads
///   the request;
/// - with credentials we offer both methods, so the request has to wait
///   for the choice; if the proxy picks username/password, the request
///   follows the credentials in the same write (RFC 1929: a proxy that
///   rejects them closes the connection).
///
/// RFC 1928 allows it (nothing in it says a message must arrive alone), and
/// dante takes it, but some servers (microsocks) handle one message per
/// `recv` and never see a request that arrived with the greeting: the
/// handshake then hangs. Ask only a proxy known to take it
/// (`Upstream::probe_pipelining`).
pub async fn connect_with<S>(
    stream: &mut S,
    target: &Target,
    credentials: Option<&Credentials>,
    pipelined: bool,
) -> Result<Target, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake(stream, CMD_CONNECT, target, credentials, pipelined).await
}

/// The longest message we send: a greeting (4), RFC 1929 authentication
/// (3 + 255 + 255) or a request (4 + 1 + 255 + 2).
const MAX_MESSAGE: usize = 4 + 3 + 255 + 255;

/// Greeting, method choice, optional authentication, request, reply, in as
/// few reads as the protocol allows, pipelined or not (see
/// [`connect_with`]).
async fn handshake<S>(
    stream: &mut S,
    command: u8,
    target: &Target,
    credentials: Option<&Credentials>,
    pipelined: bool,
) -> Result<Target, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut msg = Vec::with_capacity(MAX_MESSAGE);
    let mut incoming = Incoming::new();
    let request = |msg: &mut Vec<u8>| -> Result<(), Socks5Error> {
        msg.extend_from_slice(&[VERSION, command, 0]);
        encode_target(msg, target)
    };
    match credentials {
        None => {
            msg.extend_from_slice(&[VERSION, 1, METHOD_NONE]);
            if pipelined {
                request(&mut msg)?;
            }
            stream.write_all(&msg).await?;
            match read_method_choice(stream, &mut incoming, if pipelined { MIN_REPLY } else { 0 }).await? {
                METHOD_NONE => {}
                METHOD_UNACCEPTABLE => return Err(Socks5Error::NoAcceptableMethod),
                other => return Err(Socks5Error::UnexpectedMethod(other)),
            }
            if !pipelined {
                msg.clear();
                request(&mut msg)?;
                stream.write_all(&msg).await?;
            }
        }
        Some(creds) => {
            stream.write_all(&[VERSION, 2, METHOD_NONE, METHOD_USERPASS]).await?;
            // Whichever method it picks, at least an auth status (2 bytes)
            // follows once we have written what it asks for.
            match read_method_choice(stream, &mut incoming, 2).await? {
                METHOD_NONE => {
                    request(&mut msg)?;
                    stream.write_all(&msg).await?;
                }
                METHOD_USERPASS => {
                    encode_credentials(&mut msg, creds)?;
                    if pipelined {
                        request(&mut msg)?;
                    }
                    stream.write_all(&msg).await?;
                    let owed = if pipelined { 2 + MIN_REPLY } else { 2 };
                    let status = incoming.take(stream, 2, owed).await?;
                    if status[1] != 0 {
                        return Err(Socks5Error::AuthRejected);
                    }
                    if !pipelined {
                        msg.clear();
                        request(&mut msg)?;
                        stream.write_all(&msg).await?;
                    }
                }
                METHOD_UNACCEPTABLE => return Err(Socks5Error::NoAcceptableMethod),
                other => return Err(Socks5Error::UnexpectedMethod(other)),
            }
        }
    }
    read_reply(stream, &mut incoming).await
}

/// Appends an RFC 1929 username/password request.
fn encode_credentials(out: &mut Vec<u8>, creds: &Credentials) -> Result<(), Socks5Error> {
    let (user, pass) = (creds.username.as_bytes(), creds.password.as_bytes());
    let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
        return Err(Socks5Error::CredentialsTooLong);
    };
    out.extend_from_slice(&[1, ulen]);
    out.extend_from_slice(user);
    out.push(plen);
    out.extend_from_slice(pass);
    Ok(())
}

/// Appends ATYP, address and port in SOCKS5 wire format.
pub fn encode_target(out: &mut Vec<u8>, target: &Target) -> Result<(), Socks5Error> {
    let port = match target {
        Target::Ip(SocketAddr::V4(a)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Target::Ip(SocketAddr::V6(a)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Target::Domain(name, port) => {
            let len = u8::try_from(name.len()).map_err(|_| Socks5Error::DomainTooLong)?;
            out.push(ATYP_DOMAIN);
            out.push(len);
            out.extend_from_slice(name.as_bytes());
            *port
        }
    };
    out.extend_from_slice(&port.to_be_bytes());
    Ok(())
}

/// The shortest reply: head, ATYP 3, a zero-length name, port.
const MIN_REPLY: usize = 4 + 1 + 2;

/// Reads what the proxy sends during the handshake in as few system calls
/// as the protocol allows, never past the end of the handshake: each read
/// asks for at most the bytes that a well-formed exchange still owes (so
/// relayed data that follows the reply stays in the socket).
struct Incoming {
    buf: [u8; 2 + 2 + 4 + 1 + 255 + 2],
    /// Bytes read so far.
    len: usize,
    /// Bytes handed out so far.
    pos: usize,
}

impl Incoming {
    fn new() -> Self {
        Incoming {
            buf: [0; 2 + 2 + 4 + 1 + 255 + 2],
            len: 0,
            pos: 0,
        }
    }

    /// The next `n` bytes. `owed` (at least `n`) is how many bytes a
    /// well-formed proxy is certain to send from here: reads may take up to
    /// that many.
    async fn take<S>(&mut self, stream: &mut S, n: usize, owed: usize) -> io::Result<&[u8]>
    where
        S: AsyncRead + Unpin,
    {
        debug_assert!(owed >= n);
        let limit = (self.pos + owed).min(self.buf.len());
        while self.len < self.pos + n {
            let read = stream.read(&mut self.buf[self.len..limit]).await?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.len += read;
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }
}

/// Reads the proxy's method choice (checking the version) and returns it.
/// `then` is how many more bytes the proxy owes whatever it chooses (the
/// shortest auth status or reply that can follow).
async fn read_method_choice<S>(stream: &mut S, incoming: &mut Incoming, then: usize) -> Result<u8, Socks5Error>
where
    S: AsyncRead + Unpin,
{
    let choice = incoming.take(stream, 2, 2 + then).await?;
    if choice[0] != VERSION {
        return Err(Socks5Error::BadVersion(choice[0]));
    }
    Ok(choice[1])
}

async fn read_reply<S>(stream: &mut S, incoming: &mut Incoming) -> Result<Target, Socks5Error>
where
    S: AsyncRead + Unpin,
{
    let head = incoming.take(stream, 4, MIN_REPLY).await?;
    let (version, code, atyp) = (head[0], head[1], head[3]);
    if version != VERSION {
        return Err(Socks5Error::BadVersion(version));
    }
    if let Some(code) = ReplyCode::from_byte(code) {
        return Err(Socks5Error::Refused(code));
    }
    let left = MIN_REPLY - 4;
    let target = match atyp {
        ATYP_IPV4 => {
            let a = incoming.take(stream, 4 + 2, 4 + 2).await?;
            let ip: [u8; 4] = a[..4].try_into().expect("4 bytes");
            Target::Ip(SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([a[4], a[5]])))
        }
        ATYP_IPV6 => {
            let a = incoming.take(stream, 16 + 2, 16 + 2).await?;
            let ip: [u8; 16] = a[..16].try_into().expect("16 bytes");
            Target::Ip(SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([a[16], a[17]])))
        }
        ATYP_DOMAIN => {
            let len = usize::from(incoming.take(stream, 1, left).await?[0]);
            let a = incoming.take(stream, len + 2, len + 2).await?;
            let name = String::from_utf8_lossy(&a[..len]).into_owned();
            Target::Domain(name, u16::from_be_bytes([a[len], a[len + 1]]))
        }
        other => return Err(Socks5Error::BadAddressType(other)),
    };
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// Runs `connect` against a scripted server: `expect` is what the client
    /// must send, `answer` what the server sends back (in one piece).
    async fn exchange(
        target: Target,
        creds: Option<Credentials>,
        script: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Target, Socks5Error> {
        exchange_with(target, creds, script, false).await
    }

    async fn exchange_with(
        target: Target,
        creds: Option<Credentials>,
        script: Vec<(Vec<u8>, Vec<u8>)>,
        pipelined: bool,
    ) -> Result<Target, Socks5Error> {
        let (mut client, mut server) = duplex(1024);
        let server_task = tokio::spawn(async move {
            for (expect, answer) in script {
                let mut got = vec![0u8; expect.len()];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expect);
                server.write_all(&answer).await.unwrap();
            }
        });
        let result = connect_with(&mut client, &target, creds.as_ref(), pipelined).await;
        drop(client);
        server_task.await.unwrap();
        result
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn connect_ipv4_without_auth() {
        let target = Target::Ip("10.0.2.2:80".parse().unwrap());
        let bound = rt().block_on(exchange(
            target,
            None,
            vec![
                (vec![5, 1, 0], vec![5, 0]),
                (
                    vec![5, 1, 0, 1, 10, 0, 2, 2, 0, 80],
                    vec![5, 0, 0, 1, 10, 0, 2, 1, 0x30, 0x39],
                ),
            ],
        ));
        assert_eq!(bound.unwrap(), Target::Ip("10.0.2.1:12345".parse().unwrap()));
    }

    #[test]
    fn request_follows_the_greeting_without_waiting() {
        // The server reads greeting and request before it answers anything.
        let target = Target::Ip("10.0.2.2:80".parse().unwrap());
        let mut sent = vec![5, 1, 0];
        sent.extend_from_slice(&[5, 1, 0, 1, 10, 0, 2, 2, 0, 80]);
        let mut answer = vec![5, 0];
        answer.extend_from_slice(&[5, 0, 0, 1, 10, 0, 2, 1, 0x30, 0x39]);
        let bound = rt().block_on(exchange_with(target, None, vec![(sent, answer)], true));
        assert_eq!(bound.unwrap(), Target::Ip("10.0.2.1:12345".parse().unwrap()));
    }

    #[test]
    fn request_follows_the_credentials_without_waiting() {
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let target = Target::Ip("10.0.2.2:80".parse().unwrap());
        let mut sent = vec![1, 1, b'u', 1, b'p'];
        sent.extend_from_slice(&[5, 1, 0, 1, 10, 0, 2, 2, 0, 80]);
        let mut answer = vec![1, 0];
        answer.extend_from_slice(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        let r = rt().block_on(exchange_with(
            target,
            Some(creds),
            vec![(vec![5, 2, 0, 2], vec![5, 2]), (sent, answer)],
            true,
        ));
        assert!(r.is_ok());
    }

    #[test]
    fn relayed_data_after_the_reply_stays_in_the_stream() {
        // Method choice, reply and the first relayed bytes in one piece, for
        // each address type: the handshake must not read into the data.
        let mut domain_reply = vec![5, 0, 0, 3, 3];
        domain_reply.extend_from_slice(b"abc");
        domain_reply.extend_from_slice(&[0, 1]);
        let mut v6_reply = vec![5, 0, 0, 4];
        v6_reply.extend_from_slice(&[0; 18]);
        let empty_name_reply = vec![5, 0, 0, 3, 0, 0, 1];
        let replies = [
            vec![5, 0, 0, 1, 1, 2, 3, 4, 0, 5],
            domain_reply,
            v6_reply,
            empty_name_reply,
        ];
        for (reply, pipelined) in replies.iter().flat_map(|r| [(r, false), (r, true)]) {
            rt().block_on(async {
                let (mut client, mut server) = duplex(1024);
                let mut answer = vec![5, 0];
                answer.extend_from_slice(reply);
                answer.extend_from_slice(b"DATA");
                server.write_all(&answer).await.unwrap();
                let target = Target::Ip("10.0.2.2:80".parse().unwrap());
                connect_with(&mut client, &target, None, pipelined).await.unwrap();
                let mut data = [0u8; 4];
                client.read_exact(&mut data).await.unwrap();
                assert_eq!(&data, b"DATA", "reply {reply:?}");
            });
        }
    }

    #[test]
    fn connect_ipv6_and_domain() {
        let v6 = Target::Ip("[fd00:2::2]:443".parse().unwrap());
        let mut req = vec![5, 1, 0, 4];
        req.extend_from_slice(&"fd00:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        req.extend_from_slice(&[1, 187]);
        let mut reply = vec![5, 0, 0, 4];
        reply.extend_from_slice(&[0; 16]);
        reply.extend_from_slice(&[0, 0]);
        let r = rt().block_on(exchange(v6, None, vec![(vec![5, 1, 0], vec![5, 0]), (req, reply)]));
        assert!(r.is_ok());

        let name = Target::Domain("service.test".into(), 8080);
        let mut req = vec![5, 1, 0, 3, 12];
        req.extend_from_slice(b"service.test");
        req.extend_from_slice(&[0x1f, 0x90]);
        let mut reply = vec![5, 0, 0, 3, 3];
        reply.extend_from_slice(b"abc");
        reply.extend_from_slice(&[0, 1]);
        let r = rt().block_on(exchange(name, None, vec![(vec![5, 1, 0], vec![5, 0]), (req, reply)]));
        assert_eq!(r.unwrap(), Target::Domain("abc".into(), 1));
    }

    #[test]
    fn username_password_accepted_and_rejected() {
        let creds = Credentials {
            username: "user".into(),
            password: "pass".into(),
        };
        let target = Target::Ip("10.0.2.2:80".parse().unwrap());
        let auth = vec![1, 4, b'u', b's', b'e', b'r', 4, b'p', b'a', b's', b's'];
        let ok = rt().block_on(exchange(
            target.clone(),
            Some(creds.clone()),
            vec![
                (vec![5, 2, 0, 2], vec![5, 2]),
                (auth.clone(), vec![1, 0]),
                (vec![5, 1, 0, 1, 10, 0, 2, 2, 0, 80], vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
            ],
        ));
        assert!(ok.is_ok());
        let bad = rt().block_on(exchange(
            target,
            Some(creds),
            vec![(vec![5, 2, 0, 2], vec![5, 2]), (auth, vec![1, 1])],
        ));
        assert!(matches!(bad, Err(Socks5Error::AuthRejected)));
    }

    #[test]
    fn refusals_and_garbage_are_errors() {
        let target = Target::Ip("10.0.2.2:81".parse().unwrap());
        let refused = rt().block_on(exchange(
            target.clone(),
            None,
            vec![
                (vec![5, 1, 0], vec![5, 0]),
                (vec![5, 1, 0, 1, 10, 0, 2, 2, 0, 81], vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0]),
            ],
        ));
        assert!(matches!(refused, Err(Socks5Error::Refused(ReplyCode::NotAllowed))));
        let no_method = rt().block_on(exchange(target.clone(), None, vec![(vec![5, 1, 0], vec![5, 0xff])]));
        assert!(matches!(no_method, Err(Socks5Error::NoAcceptableMethod)));
        let bad_version = rt().block_on(exchange(target.clone(), None, vec![(vec![5, 1, 0], vec![4, 0])]));
        assert!(matches!(bad_version, Err(Socks5Error::BadVersion(4))));
        // The server hangs up mid-handshake.
        let eof = rt().block_on(exchange(target, None, vec![(vec![5, 1, 0], vec![5])]));
        assert!(matches!(eof, Err(Socks5Error::Io(_))));
    }

    #[test]
    fn pipelined_refusals_are_errors() {
        let target = Target::Ip("10.0.2.2:81".parse().unwrap());
        let request = vec![5, 1, 0, 1, 10, 0, 2, 2, 0, 81];
        let mut sent = vec![5, 1, 0];
        sent.extend_from_slice(&request);
        let mut answer = vec![5, 0];
        answer.extend_from_slice(&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
        let refused = rt().block_on(exchange_with(target.clone(), None, vec![(sent.clone(), answer)], true));
        assert!(matches!(refused, Err(Socks5Error::Refused(ReplyCode::NotAllowed))));
        let no_method = rt().block_on(exchange_with(
            target.clone(),
            None,
            vec![(sent.clone(), vec![5, 0xff])],
            true,
        ));
        assert!(matches!(no_method, Err(Socks5Error::NoAcceptableMethod)));
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let mut auth = vec![1, 1, b'u', 1, b'p'];
        auth.extend_from_slice(&request);
        let rejected = rt().block_on(exchange_with(
            target,
            Some(creds),
            vec![(vec![5, 2, 0, 2], vec![5, 2]), (auth, vec![1, 1])],
            true,
        ));
        assert!(matches!(rejected, Err(Socks5Error::AuthRejected)));
    }

    #[test]
    fn udp_associate_request() {
        let from: SocketAddr = "10.0.1.1:5353".parse().unwrap();
        let relay = rt().block_on(async {
            let (mut client, mut server) = duplex(1024);
            let server_task = tokio::spawn(async move {
                let mut greeting = [0u8; 3];
                server.read_exact(&mut greeting).await.unwrap();
                assert_eq!(greeting, [5, 1, 0]);
                server.write_all(&[5, 0]).await.unwrap();
                let mut request = [0u8; 10];
                server.read_exact(&mut request).await.unwrap();
                assert_eq!(request, [5, 3, 0, 1, 10, 0, 1, 1, 0x14, 0xe9]);
                server.write_all(&[5, 0, 0, 1, 10, 0, 1, 2, 0x9c, 0x40]).await.unwrap();
                server
            });
            let relay = associate(&mut client, from, None).await;
            drop(server_task.await.unwrap());
            relay
        });
        assert_eq!(relay.unwrap(), Target::Ip("10.0.1.2:40000".parse().unwrap()));
    }

    #[test]
    fn udp_header_round_trip_and_errors() {
        for target in [
            Target::Ip("10.0.2.2:7".parse().unwrap()),
            Target::Ip("[fd00:2::2]:7".parse().unwrap()),
            Target::Domain("service.test".into(), 53),
        ] {
            let mut datagram = Vec::new();
            encode_udp_header(&mut datagram, &target).unwrap();
            let header_len = datagram.len();
            datagram.extend_from_slice(b"payload");
            assert_eq!(decode_udp_header(&datagram), Ok((target, header_len)));
            // Every truncation of the header is an error, never a panic.
            for cut in 0..header_len {
                assert_eq!(
                    decode_udp_header(&datagram[..cut]),
                    Err(UdpHeaderError::Truncated),
                    "cut {cut}"
                );
            }
        }
        assert_eq!(
            decode_udp_header(&[0, 0, 1, 1, 0, 0, 0, 0, 0, 0]),
            Err(UdpHeaderError::Fragmented(1))
        );
        assert_eq!(
            decode_udp_header(&[0, 0, 0, 9, 0, 0]),
            Err(UdpHeaderError::BadAddressType(9))
        );
    }

    #[test]
    fn debug_hides_password() {
        let creds = Credentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{creds:?}").contains("secret"));
    }
}
