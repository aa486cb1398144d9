//! Just enough HTTP/1.x for a scrape endpoint: parse one request head (bounded), decide the
//! response. No I/O here (see `server`), so every input can be tested directly.
//!
//! One request per connection: every response carries `Connection: close`. Request bodies are
//! never read (no route takes one).

/// The most a request head (request line + headers) may take. Scrapers send a few hundred
/// bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The only path served.
pub const METRICS_PATH: &str = "/metrics";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request head larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("HTTP version not supported")]
    Version,
}

/// Parses a request head from the bytes received so far: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let Some(end) = head_end(buf) else {
        if buf.len() >= MAX_REQUEST_BYTES {
            return Err(HttpError::TooLarge);
        }
        // NUL never belongs in a request head: refuse without waiting for the rest.
        if buf.contains(&0) {
            return Err(HttpError::BadRequest("NUL byte"));
        }
        return Ok(None);
    };
    if end > MAX_REQUEST_BYTES {
        return Err(HttpError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| HttpError::BadRequest("request head is not UTF-8"))?;
    let mut lines = head
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().ok_or(HttpError::BadRequest("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HttpError::BadRequest("malformed method"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/")
            && v.len() > 5
            && v[5..].bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            return Err(HttpError::Version);
        }
        _ => return Err(HttpError::BadRequest("malformed HTTP version")),
    }
    let path = request_path(target)?;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, _value)) = line.split_once(':') else {
            return Err(HttpError::BadRequest("malformed header line"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(HttpError::BadRequest("malformed header name"));
        }
    }
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
    }))
}

/// Where the head ends (just past the blank line), `\r\n\r\n` or a bare `\n\n`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let rest = &buf[i + 1..];
            if rest.first() == Some(&b'\n') {
                return Some(i + 2);
            }
            if rest.starts_with(b"\r\n") {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The path of an origin-form (`/metrics?x`) or absolute-form (`http://h/metrics`) target.
fn request_path(target: &str) -> Result<&str, HttpError> {
    let path = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        return Err(HttpError::BadRequest("malformed request target"));
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(HttpError::BadRequest("malformed request target"));
    }
    Ok(path)
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A complete response, head and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// For `HEAD`: the head states the body's length, the body is not sent.
    pub head_only: bool,
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            head_only: false,
            allow: None,
        }
    }

    pub fn error(e: &HttpError) -> Response {
        let status = match e {
            HttpError::BadRequest(_) => 400,
            HttpError::TooLarge => 431,
            HttpError::Version => 505,
        };
        Response::text(status, format!("{e}\n"))
    }

    /// The bytes to send.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(a) = self.allow {
            head.push_str("Allow: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Routes a parsed request. `render` produces the exposition (called only for a scrape).
pub fn respond(req: &Request, render: impl FnOnce() -> String) -> Response {
    if req.path != METRICS_PATH {
        return Response::text(404, format!("not found; metrics are at {METRICS_PATH}\n"));
    }
    match req.method.as_str() {
        "GET" | "HEAD" => Response {
            status: 200,
            content_type: super::text::CONTENT_TYPE,
            body: render().into_bytes(),
            head_only: req.method == "HEAD",
            allow: None,
        },
        _ => Response {
            allow: Some("GET, HEAD"),
            ..Response::text(405, "only GET and HEAD\n")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<Request>, HttpError> {
        parse(s.as_bytes())
    }

    fn status(s: &str) -> u16 {
        match parse(s.as_bytes()) {
            Ok(Some(r)) => respond(&r, || "m 1\n".into()).status,
            Ok(None) => 0,
            Err(e) => Response::error(&e).status,
        }
    }

    #[test]
    fn a_scrape_parses() {
        let r = req("GET /metrics HTTP/1.1\r\nHost: x:9\r\nAccept: text/plain;version=0.0.4\r\nUser-Agent: Prometheus/2.53\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        let resp = respond(&r, || "m 1\n".into());
        let bytes = String::from_utf8(resp.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
        assert!(bytes.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(bytes.contains("\r\nContent-Length: 4\r\n"));
        assert!(bytes.ends_with("\r\n\r\nm 1\n"));
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert_eq!(req(""), Ok(None));
        assert_eq!(req("GET /metrics HTTP/1.1\r\nHost: x"), Ok(None));
        assert_eq!(req("GET /metrics HTTP/1.1\r\n"), Ok(None));
    }

    #[test]
    fn routes() {
        assert_eq!(status("GET /metrics HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET http://h:1/metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /metrics HTTP/1.1\n\n"), 200);
        assert_eq!(status("\r\nGET /metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("GET /metrics/ HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("GET /favicon.ico HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        let head = respond(
            &req("HEAD /metrics HTTP/1.1\r\n\r\n").unwrap().unwrap(),
            || "m 1\n".into(),
        );
        let bytes = String::from_utf8(head.to_bytes()).unwrap();
        assert!(bytes.contains("Content-Length: 4\r\n") && bytes.ends_with("\r\n\r\n"));
    }

    #[test]
    fn bad_requests_are_400() {
        for bad in [
            "GARBAGE\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "GET  /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "G(T /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTX/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET /met\x01rics HTTP/1.1\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
        assert_eq!(
            parse(b"GET /\xff HTTP/1.1\r\n\r\n").map(|_| ()),
            Err(HttpError::BadRequest("request head is not UTF-8"))
        );
        assert_eq!(parse(b"GET /\0"), Err(HttpError::BadRequest("NUL byte")));
        assert_eq!(status("GET /metrics HTTP/2.0\r\n\r\n"), 505);
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut big = String::from("GET /metrics HTTP/1.1\r\n");
        while big.len() < MAX_REQUEST_BYTES {
            big.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        // Incomplete and already too long: refused without waiting for the rest.
        assert_eq!(req(&big), Err(HttpError::TooLarge));
        big.push_str("\r\n");
        assert_eq!(req(&big), Err(HttpError::TooLarge));
        assert_eq!(Response::error(&HttpError::TooLarge).status, 431);
    }

    /// Arbitrary bytes never panic the parser (a cheap deterministic fuzz).
    #[test]
    fn any_bytes_are_handled() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"GET /metrics HTTP/1.1\r\n:\x00\xff\xc3 ?#http://";
        for len in 0..400 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse(&buf);
            for cut in 0..buf.len().min(40) {
                let _ = parse(&buf[cut..]);
            }
        }
    }
}
