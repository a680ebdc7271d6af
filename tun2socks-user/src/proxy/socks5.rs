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
    negotiate_method(stream, credentials).await?;
    send_request(stream, CMD_UDP_ASSOCIATE, &Target::Ip(from)).await?;
    read_reply(stream).await
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
    negotiate_method(stream, credentials).await?;
    send_request(stream, CMD_CONNECT, target).await?;
    read_reply(stream).await
}

async fn negotiate_method<S>(stream: &mut S, credentials: Option<&Credentials>) -> Result<(), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting: &[u8] = match credentials {
        Some(_) => &[VERSION, 2, METHOD_NONE, METHOD_USERPASS],
        None => &[VERSION, 1, METHOD_NONE],
    };
    stream.write_all(greeting).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice[0] != VERSION {
        return Err(Socks5Error::BadVersion(choice[0]));
    }
    match (choice[1], credentials) {
        (METHOD_NONE, _) => Ok(()),
        (METHOD_USERPASS, Some(creds)) => authenticate(stream, creds).await,
        (METHOD_UNACCEPTABLE, _) => Err(Socks5Error::NoAcceptableMethod),
        (other, _) => Err(Socks5Error::UnexpectedMethod(other)),
    }
}

async fn authenticate<S>(stream: &mut S, creds: &Credentials) -> Result<(), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (user, pass) = (creds.username.as_bytes(), creds.password.as_bytes());
    let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
        return Err(Socks5Error::CredentialsTooLong);
    };
    let mut msg = Vec::with_capacity(3 + user.len() + pass.len());
    msg.extend_from_slice(&[1, ulen]);
    msg.extend_from_slice(user);
    msg.push(plen);
    msg.extend_from_slice(pass);
    stream.write_all(&msg).await?;
    let mut status = [0u8; 2];
    stream.read_exact(&mut status).await?;
    if status[1] == 0 {
        Ok(())
    } else {
        Err(Socks5Error::AuthRejected)
    }
}

async fn send_request<S>(stream: &mut S, command: u8, target: &Target) -> Result<(), Socks5Error>
where
    S: AsyncWrite + Unpin,
{
    let mut msg = Vec::with_capacity(4 + 1 + 255 + 2);
    msg.extend_from_slice(&[VERSION, command, 0]);
    encode_target(&mut msg, target)?;
    stream.write_all(&msg).await?;
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

async fn read_reply<S>(stream: &mut S) -> Result<Target, Socks5Error>
where
    S: AsyncRead + Unpin,
{
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Socks5Error::BadVersion(head[0]));
    }
    if let Some(code) = ReplyCode::from_byte(head[1]) {
        return Err(Socks5Error::Refused(code));
    }
    read_address(stream, head[3]).await
}

async fn read_address<S>(stream: &mut S, atyp: u8) -> Result<Target, Socks5Error>
where
    S: AsyncRead + Unpin,
{
    let target = match atyp {
        ATYP_IPV4 => {
            let mut a = [0u8; 4];
            stream.read_exact(&mut a).await?;
            let port = stream.read_u16().await?;
            Target::Ip(SocketAddr::new(IpAddr::from(a), port))
        }
        ATYP_IPV6 => {
            let mut a = [0u8; 16];
            stream.read_exact(&mut a).await?;
            let port = stream.read_u16().await?;
            Target::Ip(SocketAddr::new(IpAddr::from(a), port))
        }
        ATYP_DOMAIN => {
            let len = stream.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            stream.read_exact(&mut name).await?;
            let port = stream.read_u16().await?;
            Target::Domain(String::from_utf8_lossy(&name).into_owned(), port)
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
        let (mut client, mut server) = duplex(1024);
        let server_task = tokio::spawn(async move {
            for (expect, answer) in script {
                let mut got = vec![0u8; expect.len()];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expect);
                server.write_all(&answer).await.unwrap();
            }
        });
        let result = connect(&mut client, &target, creds.as_ref()).await;
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
