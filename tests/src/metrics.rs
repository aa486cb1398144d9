//! Scraping `fulcrumd`'s `/metrics` in tests: a raw HTTP exchange (from the test process, or
//! from inside a lab host's network namespace) and a strict reader of the Prometheus text
//! format 0.0.4 that also checks the exposition is well formed.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Read;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

/// Sends `request` as is to `addr`, half-closes, and returns everything the server sent.
pub fn exchange(addr: &str, request: &[u8]) -> Result<Vec<u8>> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    // The server may answer (and close) before a large request is all written.
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .with_context(|| format!("reading from {addr}"))?;
    Ok(out)
}

/// As [`exchange`], from inside network namespace `ns` (`ip netns` name): a short-lived
/// thread enters the namespace, so the test process itself stays where it is.
pub fn exchange_in(ns: &str, addr: &str, request: &[u8]) -> Result<Vec<u8>> {
    let (ns, addr, request) = (ns.to_string(), addr.to_string(), request.to_vec());
    std::thread::spawn(move || -> Result<Vec<u8>> {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening namespace {ns}"))?;
        // SAFETY: setns(2) with a namespace fd we hold; it changes only this thread, which
        // ends right after the exchange.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {ns}: {}", std::io::Error::last_os_error());
        }
        exchange(&addr, &request)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("scrape thread panicked"))?
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn parse(raw: &[u8]) -> Result<HttpResponse> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("no end of head in {text:?}"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("status line {status_line:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(HttpResponse {
            status,
            headers,
            body: body.to_string(),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET /metrics` on `addr`, in namespace `ns` when given: the checked exposition.
pub fn scrape(ns: Option<&str>, addr: &str) -> Result<Exposition> {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    let raw = match ns {
        Some(ns) => exchange_in(ns, addr, req.as_bytes())?,
        None => exchange(addr, req.as_bytes())?,
    };
    let r = HttpResponse::parse(&raw)?;
    if r.status != 200 {
        bail!("scrape of {addr}: status {}: {}", r.status, r.body);
    }
    let ct = r.header("content-type").unwrap_or_default();
    if !ct.starts_with("text/plain; version=0.0.4") {
        bail!("scrape of {addr}: content type {ct:?}");
    }
    let len: usize = r
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .context("content-length")?;
    if len != r.body.len() {
        bail!("content-length {len}, body {} bytes", r.body.len());
    }
    Exposition::parse(&r.body)
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape's samples and family types.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    /// Parses and checks: every sample's family has one TYPE line before its samples, a
    /// family's samples are contiguous, no series appears twice, values parse.
    pub fn parse(text: &str) -> Result<Exposition> {
        let mut e = Exposition {
            text: text.to_string(),
            ..Default::default()
        };
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut series = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .with_context(|| format!("line {n}: {line}"))?;
                if !["counter", "gauge", "untyped", "summary", "histogram"].contains(&kind) {
                    bail!("line {n}: unknown type {kind}");
                }
                if e.types.insert(name.to_string(), kind.to_string()).is_some() {
                    bail!("line {n}: second TYPE for {name}");
                }
                if let Some(c) = current.replace(name.to_string()) {
                    closed.insert(c);
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let s = parse_sample(line).with_context(|| format!("line {n}: {line}"))?;
            if current.as_deref() != Some(s.name.as_str()) {
                bail!("line {n}: sample of {} outside its family's block", s.name);
            }
            if closed.contains(&s.name) {
                bail!("line {n}: {} continues after another family", s.name);
            }
            if !series.insert((s.name.clone(), s.labels.clone())) {
                bail!("line {n}: series written twice");
            }
            e.samples.push(s);
        }
        Ok(e)
    }

    /// The value of the series with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Samples of `name` whose labels include `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .collect()
    }

    /// Sum over [`Exposition::matching`].
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    pub fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(['{', ' '])
        .context("no value after the metric name")?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let end = loop {
            // label name
            let Some(&(start, c)) = chars.peek() else {
                bail!("unterminated labels")
            };
            if c == '}' {
                break start + 1;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key}: value not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => bail!("unterminated label value"),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        other => bail!("bad escape {other:?}"),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            if labels.insert(key.clone(), value).is_some() {
                bail!("label {key} twice");
            }
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => break i + 1,
                other => bail!("after a label: {other:?}"),
            }
        };
        rest = &r[end..];
    }
    let value = rest
        .strip_prefix(' ')
        .context("no space before the value")?;
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_fulcrumd_writes() {
        let e = Exposition::parse(
            "# HELP a_total A.\n# TYPE a_total counter\na_total{s=\"x \\\"y\\\" \\\\ \\n\",r=\"[::1]:80\"} 3\na_total{s=\"z\"} 4\n# TYPE g gauge\ng NaN\n",
        )
        .unwrap();
        assert_eq!(
            e.get("a_total", &[("s", "x \"y\" \\ \n"), ("r", "[::1]:80")]),
            Some(3.0)
        );
        assert_eq!(e.sum("a_total", &[]), 7.0);
        assert!(e.get("g", &[]).unwrap().is_nan());
        assert_eq!(e.kind("a_total"), Some("counter"));
    }

    #[test]
    fn rejects_malformed_expositions() {
        for bad in [
            "a 1\n",
            "# TYPE a gauge\n# TYPE a gauge\na 1\n",
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n",
            "# TYPE a gauge\na 1\na 1\n",
            "# TYPE a gauge\na{x=1} 1\n",
            "# TYPE a gauge\na one\n",
        ] {
            assert!(Exposition::parse(bad).is_err(), "{bad:?}");
        }
    }
}
