//! The local DNS responder of `fake-ip` mode, sans-I/O: bytes of a query in,
//! what to do with it out. Workers own one each (they share the pool).
//!
//! What it answers, and how:
//!
//! * A/AAAA, class IN, one question: the name's fake address from the pool,
//!   with the pool's TTL. A family the pool has no range for gets an empty
//!   NOERROR answer (the name exists, it has no address of that family):
//!   NXDOMAIN would tell the client the name does not exist at all.
//! * Any other type or class (MX, TXT, SRV, PTR, HTTPS, CHAOS, ...), and the
//!   root name: [`Reply::Forward`], the caller sends the query upstream as is.
//! * Pool full (every entry pinned or within its TTL): SERVFAIL. It says
//!   "failed now, try again", which is what a full pool is (entries age out);
//!   REFUSED would read as policy, and stub resolvers stop asking.
//! * Not a query (QR set) or shorter than a header: [`Reply::Drop`]. Never
//!   answering answers keeps two responders from ping-ponging.
//! * Readable header but undecodable rest, or QDCOUNT other than 1: FORMERR
//!   (several questions have no agreed meaning; RFC 9619 says QDCOUNT is one).
//!   Opcodes other than QUERY: NOTIMP.
//!
//! Every reply echoes the ID, opcode, RD and CD bits and the question, and sets
//! RA. EDNS(0): a query with an OPT record gets a minimal OPT back (no options,
//! DO clear, our payload size), as RFC 6891 §6.1.1 requires; its options
//! (cookies, padding, ...) are ignored, and a version above 0 gets BADVERS.
//! The answer is one record, so it always fits the 512 bytes of plain UDP.

use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{
    DEFAULT_MAX_PAYLOAD_LEN, Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::fake_ip::{FakeAddrs, FakeIpError, FakeIpPool};

/// What to do with a datagram sent to the responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back to the client.
    Answer(Vec<u8>),
    /// Not ours to answer: send the original query upstream.
    Forward,
    /// Not a DNS query at all: ignore it.
    Drop,
}

/// The fake-IP responder of one worker.
#[derive(Debug, Clone)]
pub struct Responder {
    pool: Arc<FakeIpPool>,
}

/// How a query is answered, before encoding.
struct Response {
    code: ResponseCode,
    question: Option<Query>,
    answer: Option<Record>,
    /// Whether the query carried an OPT record, so the answer needs one.
    edns: bool,
}

impl Response {
    fn error(code: ResponseCode) -> Self {
        Self {
            code,
            question: None,
            answer: None,
            edns: false,
        }
    }
}

impl Responder {
    pub fn new(pool: Arc<FakeIpPool>) -> Self {
        Self { pool }
    }

    /// The pool this responder hands addresses out from.
    pub fn pool(&self) -> &Arc<FakeIpPool> {
        &self.pool
    }

    /// Decides what to do with `query` (one DNS message, without the TCP
    /// length prefix). Total: any input gives a [`Reply`], never a panic.
    pub fn handle(&self, query: &[u8], now: Instant) -> Reply {
        let Ok(header) = Header::read(&mut BinDecoder::new(query)) else {
            return Reply::Drop;
        };
        if header.message_type != MessageType::Query {
            return Reply::Drop;
        }
        let response = if header.op_code != OpCode::Query {
            Response::error(ResponseCode::NotImp)
        } else {
            match Message::from_vec(query) {
                Ok(request) => match self.answer(request, now) {
                    Some(response) => response,
                    None => return Reply::Forward,
                },
                Err(error) => {
                    tracing::debug!(id = header.id, %error, "malformed DNS query");
                    Response::error(ResponseCode::FormErr)
                }
            }
        };
        encode(&header.metadata, response)
    }

    /// The response to a well-formed query, or `None` to forward it.
    fn answer(&self, request: Message, now: Instant) -> Option<Response> {
        let edns = request.edns.as_ref().map(Edns::version);
        let respond = |code, question, answer| {
            Some(Response {
                code,
                question,
                answer,
                edns: edns.is_some(),
            })
        };
        let Ok([question]) = <[Query; 1]>::try_from(request.queries) else {
            return respond(ResponseCode::FormErr, None, None);
        };
        if edns.is_some_and(|version| version > 0) {
            return respond(ResponseCode::BADVERS, Some(question), None);
        }
        let ours = matches!(question.query_type(), RecordType::A | RecordType::AAAA);
        if !ours || question.query_class() != DNSClass::IN {
            return None;
        }
        match self.pool.lookup_or_allocate(&question.name().to_ascii(), now) {
            Ok(addrs) => {
                let record = self.record(&question, addrs);
                respond(ResponseCode::NoError, Some(question), record)
            }
            Err(FakeIpError::Full { .. }) => respond(ResponseCode::ServFail, Some(question), None),
            // The root, or a name too long for SOCKS5: not ours.
            Err(FakeIpError::InvalidName(_)) => None,
        }
    }

    /// The answer record to an A or AAAA `question`; none if the pool has no
    /// range of that family.
    fn record(&self, question: &Query, addrs: FakeAddrs) -> Option<Record> {
        let rdata = match question.query_type() {
            RecordType::A => RData::A(A(addrs.v4?)),
            _ => RData::AAAA(AAAA(addrs.v6?)),
        };
        // The pool's TTL is validated to fit DNS's 31 bits.
        let ttl = u32::try_from(self.pool.ttl().as_secs()).unwrap_or(i32::MAX as u32);
        Some(Record::from_rdata(question.name().clone(), ttl, rdata))
    }
}

/// The wire form of `response` to the query whose header was `request`.
fn encode(request: &Metadata, response: Response) -> Reply {
    let mut message = Message::response(request.id, request.op_code);
    message.metadata = Metadata::response_from_request(request);
    message.metadata.recursion_available = true;
    message.metadata.response_code = response.code;
    message.queries.extend(response.question);
    message.answers.extend(response.answer);
    if response.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(DEFAULT_MAX_PAYLOAD_LEN);
        message.set_edns(edns);
    }
    match message.to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(error) => {
            // Unreachable with one question and one record; don't leave the
            // client waiting on a guess.
            tracing::warn!(id = request.id, %error, "could not encode a DNS answer");
            Reply::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use hickory_proto::rr::Name;

    use super::*;
    use crate::dns::fake_ip::FakeIpConfig;

    /// `dig +noedns @... Example.COM A`, as captured from dig 9.20: ID 0x5acf,
    /// RD and AD set.
    const DIG_NOEDNS_A: &str = "5acf01200001000000000000074578616d706c6503434f4d0000010001";
    /// `dig @... example.com AAAA`: EDNS(0), payload 1232, with a cookie.
    const DIG_EDNS_AAAA: &str =
        "655101200001000000000001076578616d706c6503636f6d00001c000100002904d000000000000c000a0008fd395656025f8875";

    /// Root name, type OPT (41), payload 1232, extended RCODE 0, version 0,
    /// no flags, no options.
    const MINIMAL_OPT: &str = "00002904d0000000000000";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn responder(config: FakeIpConfig) -> Responder {
        Responder::new(Arc::new(FakeIpPool::new(config).unwrap()))
    }

    fn default_responder() -> Responder {
        responder(FakeIpConfig::default())
    }

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut message = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        message
    }

    fn answer_bytes(responder: &Responder, query: &[u8]) -> Vec<u8> {
        match responder.handle(query, Instant::now()) {
            Reply::Answer(bytes) => bytes,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn answer(responder: &Responder, query: &Message) -> Message {
        Message::from_vec(&answer_bytes(responder, &query.to_vec().unwrap())).unwrap()
    }

    #[test]
    fn dig_noedns_a_answer_exact_bytes() {
        let responder = default_responder();
        let bytes = answer_bytes(&responder, &hex(DIG_NOEDNS_A));
        let expected = [
            "5acf",
            "8180",
            "0001000100000000",                   // ID; QR RD RA, NOERROR; one question, one answer
            "074578616d706c6503434f4d0000010001", // the question, its case kept (0x20 resolvers check it)
            "c00c",
            "00010001",
            "0000003c",
            "0004",
            "c6120004", // pointer to it, A IN, TTL 60, 198.18.0.4
        ]
        .concat();
        assert_eq!(bytes, hex(&expected));
    }

    #[test]
    fn dig_edns_aaaa_answer_has_minimal_opt() {
        let responder = default_responder();
        let bytes = answer_bytes(&responder, &hex(DIG_EDNS_AAAA));
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            (message.id, message.response_code, message.recursion_desired),
            (0x6551, ResponseCode::NoError, true)
        );
        assert_eq!(message.answers.len(), 1);
        let RData::AAAA(AAAA(ip)) = message.answers[0].data else {
            panic!("{message}")
        };
        assert_eq!(ip, "fd74:3273:ffff::".parse::<Ipv6Addr>().unwrap());
        let edns = message.edns.as_ref().expect("an OPT record answers an OPT record");
        assert_eq!(
            (edns.version(), edns.max_payload(), edns.flags().dnssec_ok),
            (0, 1232, false)
        );
        assert!(edns.options().as_ref().is_empty(), "the cookie is ignored, not echoed");
        assert!(bytes.ends_with(&hex(MINIMAL_OPT)), "the OPT record comes last");
    }

    #[test]
    fn a_and_aaaa_share_one_entry_and_carry_the_ttl() {
        let responder = responder(FakeIpConfig {
            ttl: Duration::from_secs(300),
            ..FakeIpConfig::default()
        });
        let a = answer(&responder, &query("Service.Test.", RecordType::A));
        let aaaa = answer(&responder, &query("service.test.", RecordType::AAAA));
        assert_eq!(
            (a.id, a.message_type, a.recursion_available),
            (0xbeef, MessageType::Response, true)
        );
        assert_eq!(a.answers[0].ttl, 300);
        assert_eq!(a.answers[0].name, Name::from_ascii("Service.Test.").unwrap());
        assert_eq!(a.answers[0].data, RData::A(A(Ipv4Addr::new(198, 18, 0, 4))));
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(AAAA("fd74:3273:ffff::".parse().unwrap()))
        );
        let guard = responder.pool().resolve("fd74:3273:ffff::".parse().unwrap()).unwrap();
        assert_eq!(guard.name(), "service.test");
    }

    #[test]
    fn disabled_family_gets_empty_noerror() {
        let responder = responder(FakeIpConfig {
            ipv6: None,
            ..FakeIpConfig::default()
        });
        let reply = answer(&responder, &query("example.com.", RecordType::AAAA));
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries.len(), 1);
    }

    #[test]
    fn other_types_classes_and_the_root_are_forwarded() {
        let responder = default_responder();
        for rtype in [
            RecordType::MX,
            RecordType::TXT,
            RecordType::SRV,
            RecordType::PTR,
            RecordType::HTTPS,
            RecordType::ANY,
        ] {
            let bytes = query("example.com.", rtype).to_vec().unwrap();
            assert_eq!(responder.handle(&bytes, Instant::now()), Reply::Forward, "{rtype}");
        }
        let mut chaos = query("version.bind.", RecordType::A);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(
            responder.handle(&chaos.to_vec().unwrap(), Instant::now()),
            Reply::Forward
        );
        let root = query(".", RecordType::A).to_vec().unwrap();
        assert_eq!(responder.handle(&root, Instant::now()), Reply::Forward);
        assert!(responder.pool().is_empty());
    }

    #[test]
    fn full_pool_answers_servfail() {
        let responder = responder(FakeIpConfig {
            capacity: 1,
            ..FakeIpConfig::default()
        });
        answer(&responder, &query("one.test.", RecordType::A));
        let reply = answer(&responder, &query("two.test.", RecordType::A));
        assert_eq!(reply.response_code, ResponseCode::ServFail);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries[0].name(), &Name::from_ascii("two.test.").unwrap());
    }

    #[test]
    fn question_count_other_than_one_is_formerr() {
        let responder = default_responder();
        let mut two = query("a.test.", RecordType::A);
        two.add_query(Query::query(Name::from_ascii("b.test.").unwrap(), RecordType::A));
        let mut none = query("a.test.", RecordType::A);
        none.queries.clear();
        for message in [two, none] {
            let reply = answer(&responder, &message);
            assert_eq!((reply.id, reply.response_code), (0xbeef, ResponseCode::FormErr));
            assert!(reply.queries.is_empty() && reply.answers.is_empty());
        }
        assert!(responder.pool().is_empty());
    }

    #[test]
    fn duplicate_opt_is_formerr() {
        // The EDNS query from dig with its OPT record appended a second time.
        let mut bytes = hex(DIG_EDNS_AAAA);
        bytes[11] = 2;
        bytes.extend_from_slice(&hex(MINIMAL_OPT));
        let reply = Message::from_vec(&answer_bytes(&default_responder(), &bytes)).unwrap();
        assert_eq!((reply.id, reply.response_code), (0x6551, ResponseCode::FormErr));
    }

    #[test]
    fn unknown_edns_version_is_badvers() {
        let mut message = query("example.com.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_version(1);
        message.set_edns(edns);
        let reply = answer(&default_responder(), &message);
        // 16 is BADVERS in an OPT record (BADSIG to hickory, which shares the code).
        assert_eq!(u16::from(reply.response_code), 16);
        assert_eq!(reply.edns.as_ref().map(Edns::version), Some(0));
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn flags_are_echoed() {
        let mut message = query("example.com.", RecordType::A);
        message.metadata.recursion_desired = false;
        message.metadata.checking_disabled = true;
        let reply = answer(&default_responder(), &message);
        assert!(!reply.recursion_desired && reply.checking_disabled && reply.recursion_available);
        assert!(!reply.authoritative && !reply.truncation && !reply.authentic_data);
    }

    #[test]
    fn other_opcodes_are_notimp() {
        let mut message = query("example.com.", RecordType::SOA);
        message.metadata.op_code = OpCode::Notify;
        let reply = answer(&default_responder(), &message);
        assert_eq!(
            (reply.op_code, reply.response_code),
            (OpCode::Notify, ResponseCode::NotImp)
        );
    }

    #[test]
    fn responses_and_runts_are_dropped() {
        let responder = default_responder();
        let mut response = query("example.com.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(
            responder.handle(&response.to_vec().unwrap(), Instant::now()),
            Reply::Drop
        );
        assert_eq!(responder.handle(&[0; 11], Instant::now()), Reply::Drop);
        assert_eq!(responder.handle(&[], Instant::now()), Reply::Drop);
    }

    /// Every prefix of a valid query: no panic; shorter than a header is
    /// dropped, anything longer is a FORMERR carrying the query's ID.
    #[test]
    fn truncated_queries_never_panic() {
        let responder = default_responder();
        for full in [hex(DIG_NOEDNS_A), hex(DIG_EDNS_AAAA)] {
            for len in 0..full.len() {
                match responder.handle(&full[..len], Instant::now()) {
                    Reply::Drop => assert!(len < 12, "len {len}"),
                    Reply::Answer(bytes) => {
                        let reply = Message::from_vec(&bytes).unwrap();
                        assert!(len >= 12, "len {len}");
                        assert_eq!(
                            (reply.id, reply.response_code),
                            (u16::from_be_bytes([full[0], full[1]]), ResponseCode::FormErr)
                        );
                    }
                    Reply::Forward => panic!("len {len} forwarded"),
                }
            }
        }
        assert!(responder.pool().is_empty());
    }

    #[test]
    fn longest_name_fits_plain_udp() {
        // Four 62-byte labels: 4 * 63 + 1 = 253 bytes on the wire, near the 255 limit.
        let label = "x".repeat(62);
        let name = format!("{label}.{label}.{label}.{label}.");
        for rtype in [RecordType::A, RecordType::AAAA] {
            let mut message = query(&name, rtype);
            message.set_edns(Edns::new());
            let bytes = answer_bytes(&default_responder(), &message.to_vec().unwrap());
            assert!(bytes.len() <= 512, "{} bytes", bytes.len());
            assert_eq!(Message::from_vec(&bytes).unwrap().answers.len(), 1);
        }
    }
}
