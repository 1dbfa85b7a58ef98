//! Just enough HTTP/1.1 for the API socket, as Firecracker serves it: requests with a
//! `Content-Length` body (httparse reads the head), one after another on a connection, and
//! responses with a JSON body or none.

/// The largest request head and body the API takes.
pub const MAX_REQUEST: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// What a connection's buffered bytes hold so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request, and how many bytes of the buffer it took.
    Request(Request, usize),
    /// Not all of it yet.
    Partial,
    /// Not HTTP the API can take: answered with a 400, then the connection is closed.
    Bad(String),
}

pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => return Parsed::Partial,
        Ok(httparse::Status::Partial) => return Parsed::Bad("the request is too large".into()),
        Err(e) => return Parsed::Bad(format!("malformed HTTP request: {e}")),
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Bad("malformed HTTP request".into());
    };
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).ok();
            match value.and_then(|v| v.trim().parse().ok()) {
                Some(n) => length = n,
                None => return Parsed::Bad("malformed Content-Length".into()),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad("chunked bodies are not supported: send Content-Length".into());
        }
    }
    if length > MAX_REQUEST {
        return Parsed::Bad("the request is too large".into());
    }
    let Some(body) = buf.get(head..head + length) else {
        return Parsed::Partial;
    };
    Parsed::Request(
        Request {
            method: method.to_string(),
            path: path.to_string(),
            body: body.to_vec(),
        },
        head + length,
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// A JSON document, or none (204).
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            body: Some(body.to_string()),
        }
    }

    /// Firecracker's error body: `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "fault_message": message.into() }),
        )
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\nServer: gureum\r\n", self.status);
        match &self.body {
            Some(body) => out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_a_body_parses_and_the_next_one_follows() {
        let two = b"PATCH /vm HTTP/1.1\r\nHost: localhost\r\nContent-Length: 18\r\n\r\n\
            {\"state\":\"Paused\"}GET / HTTP/1.1\r\n\r\n";
        let Parsed::Request(first, used) = parse(two) else {
            panic!("{:?}", parse(two));
        };
        assert_eq!(
            (
                first.method.as_str(),
                first.path.as_str(),
                first.body.as_slice()
            ),
            ("PATCH", "/vm", &b"{\"state\":\"Paused\"}"[..])
        );
        let Parsed::Request(second, rest) = parse(&two[used..]) else {
            panic!("second");
        };
        assert_eq!((second.path.as_str(), used + rest), ("/", two.len()));
    }

    #[test]
    fn partial_requests_wait_and_bad_ones_are_refused() {
        assert_eq!(parse(b"GET / HT"), Parsed::Partial);
        assert_eq!(
            parse(b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parsed::Partial
        );
        for bad in [
            &b"\x00\x01 nonsense\r\n\r\n"[..],
            b"PUT /x HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Bad(_)), "{bad:?}");
        }
        let endless = vec![b'a'; MAX_REQUEST + 1];
        assert!(matches!(parse(&endless), Parsed::Bad(_)));
    }

    #[test]
    fn responses_carry_their_length() {
        let r = Response::fault(400, "no");
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nServer: gureum\r\nContent-Type: application/json\r\n\
             Content-Length: 22\r\n\r\n{\"fault_message\":\"no\"}"
        );
        assert_eq!(
            Response::no_content().to_bytes(),
            b"HTTP/1.1 204 No Content\r\nServer: gureum\r\n\r\n"
        );
    }
}
