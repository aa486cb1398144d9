//! Address text in ipvsadm's forms: `192.0.2.1:80`, `[2001:db8::1]:80`, and bare IPs.
//!
//! Parsing is strict on purpose: a bare IPv6 address followed by a port (`2001:db8::1:80`) is
//! ambiguous, so it is refused with a hint instead of being guessed at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::{ModelError, invalid};

/// Parses `192.0.2.1:80` or `[2001:db8::1]:80`. Port 0 is allowed (its meaning depends on the
/// caller). Host names are not resolved and IPv6 zone indexes are not accepted.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, ModelError> {
    let (ip, port) = split_host_port(text)?;
    Ok(SocketAddr::new(ip, parse_port(port, text)?))
}

/// Parses a bare IPv4 or IPv6 address (no port, no brackets).
pub fn parse_ip(text: &str) -> Result<IpAddr, ModelError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && inner.parse::<Ipv6Addr>().is_ok()
    {
        invalid!("\"{text}\": write the address without brackets: {inner}");
    }
    if text.contains('%') {
        invalid!("\"{text}\": IPv6 zone indexes (%...) are not supported");
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        invalid!(
            "\"{text}\" has a port; write the address alone: {}",
            sa.ip()
        );
    }
    invalid!("\"{text}\" is not an IP address (host names are not resolved)")
}

/// Splits an `addr:rest` text into the IP address and the text after the separating colon,
/// which is a port for addresses and a port list for service keys.
pub(crate) fn split_host_port(text: &str) -> Result<(IpAddr, &str), ModelError> {
    if text.is_empty() {
        invalid!("empty address; write 192.0.2.1:80 or [2001:db8::1]:80");
    }
    if let Some(rest) = text.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            invalid!("\"{text}\": missing ']' after the IPv6 address");
        };
        let inner = &rest[..close];
        let after = &rest[close + 1..];
        if inner.contains('%') {
            invalid!("\"{text}\": IPv6 zone indexes (%...) are not supported");
        }
        let ip = match inner.parse::<Ipv6Addr>() {
            Ok(ip) => ip,
            Err(_) if inner.parse::<Ipv4Addr>().is_ok() => {
                invalid!("\"{text}\": brackets are for IPv6 only; write {inner}:port")
            }
            Err(_) => invalid!("\"{text}\": \"{inner}\" is not an IPv6 address"),
        };
        return match after.strip_prefix(':') {
            Some(port) => Ok((IpAddr::V6(ip), port)),
            None if after.is_empty() => invalid!("\"{text}\": missing port; write [{inner}]:80"),
            None => invalid!("\"{text}\": expected ':' and a port after ']'"),
        };
    }
    match text.matches(':').count() {
        0 => {
            if text.parse::<IpAddr>().is_ok() {
                invalid!("\"{text}\": missing port; write {text}:80");
            }
            invalid!("\"{text}\" is not an IP address with a port (host names are not resolved)")
        }
        1 => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            match host.parse::<Ipv4Addr>() {
                Ok(ip) => Ok((IpAddr::V4(ip), port)),
                Err(_) => invalid!(
                    "\"{text}\": \"{host}\" is not an IPv4 address (host names are not resolved)"
                ),
            }
        }
        _ => {
            // Bare IPv6 text: whether the last group is a port cannot be told, so never guess.
            if text.parse::<Ipv6Addr>().is_ok() {
                invalid!("\"{text}\": an IPv6 address with a port goes in brackets: [{text}]:80");
            }
            invalid!(
                "\"{text}\": not an address with a port; IPv6 is written in brackets, e.g. [2001:db8::1]:80"
            )
        }
    }
}

/// Parses a decimal port 0..=65535; `whole` is the full input, quoted in errors.
pub(crate) fn parse_port(port: &str, whole: &str) -> Result<u16, ModelError> {
    if port.is_empty() {
        invalid!("\"{whole}\": missing port after ':'");
    }
    // u16::from_str would accept "+80"; only plain digits are a port here.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        invalid!("\"{whole}\": port \"{port}\" is not a number");
    }
    match port.parse::<u16>() {
        Ok(p) => Ok(p),
        Err(_) => invalid!("\"{whole}\": port {port} is out of range (0..=65535)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_forms() {
        assert_eq!(
            parse_socket_addr("192.0.2.1:80").unwrap().to_string(),
            "192.0.2.1:80"
        );
        assert_eq!(
            parse_socket_addr("[2001:db8::1]:443").unwrap().to_string(),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            parse_socket_addr("[2001:DB8:0::1]:0").unwrap().to_string(),
            "[2001:db8::1]:0"
        );
        assert_eq!(parse_ip("2001:db8::1").unwrap().to_string(), "2001:db8::1");
    }

    #[test]
    fn rejects_with_precise_messages() {
        let cases = [
            ("", "empty address"),
            ("2001:db8::1:80", "in brackets: [2001:db8::1:80]:80"),
            ("2001:db8::zz:80", "IPv6 is written in brackets"),
            ("192.0.2.1", "missing port; write 192.0.2.1:80"),
            ("[2001:db8::1]", "missing port; write [2001:db8::1]:80"),
            ("[2001:db8::1]80", "expected ':'"),
            ("[2001:db8::1:80", "missing ']'"),
            ("[192.0.2.1]:80", "brackets are for IPv6 only"),
            ("[fe80::1%2]:80", "zone indexes"),
            ("192.0.2.1:", "missing port after ':'"),
            ("192.0.2.1:+80", "port \"+80\" is not a number"),
            ("192.0.2.1:65536", "port 65536 is out of range"),
            ("www.example.com:80", "host names are not resolved"),
            ("192.0.2.1 :80", "is not an IPv4 address"),
        ];
        for (input, want) in cases {
            let err = parse_socket_addr(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}");
        }
        for (input, want) in [
            ("[2001:db8::1]", "without brackets: 2001:db8::1"),
            (
                "192.0.2.1:80",
                "has a port; write the address alone: 192.0.2.1",
            ),
            ("eth0", "is not an IP address"),
        ] {
            let err = parse_ip(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}");
        }
    }
}
