//! The network-namespace harness itself: hosts on one segment reach each other over IPv4
//! and IPv6, TCP and UDP, with the real kernel stacks; everything is gone after the drop.

use fulcrum_tests::netns::Lab;
use fulcrum_tests::testsrv_bin;

fn probe(
    lab: &Lab,
    client: &fulcrum_tests::netns::Host,
    kind: &str,
    target: &str,
) -> serde_json::Value {
    let _ = lab;
    let out = client
        .command(testsrv_bin().to_str().unwrap())
        .args(["probe", kind, target, "--count", "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn hosts_talk_over_both_families_and_cleanup_removes_everything() {
    let prefix;
    {
        let mut lab = Lab::new("lab").unwrap();
        prefix = lab.prefix.clone();
        let client = lab.host("client", 10).unwrap();
        let rs = lab.host("rs1", 21).unwrap();
        let srv = testsrv_bin();
        let idx = lab
            .spawn(
                &rs,
                srv.to_str().unwrap(),
                &[
                    "serve",
                    "--name",
                    "rs1",
                    "--tcp",
                    "[::]:8080",
                    "--udp",
                    "[::]:5353",
                ],
            )
            .unwrap();
        assert_eq!(lab.read_line(idx).unwrap().trim(), "ready");
        for (kind, target) in [
            ("--tcp", format!("{}:8080", rs.ip4)),
            ("--tcp", format!("[{}]:8080", rs.ip6)),
            ("--udp", format!("{}:5353", rs.ip4)),
            ("--udp", format!("[{}]:5353", rs.ip6)),
        ] {
            let v = probe(&lab, &client, kind, &target);
            assert_eq!(v["replies"]["rs1"], 5, "{kind} {target}: {v}");
            assert_eq!(v["failed"], 0, "{kind} {target}: {v}");
        }
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&prefix),
        "namespaces left behind"
    );
}
