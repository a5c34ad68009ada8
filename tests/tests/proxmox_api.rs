//! The Proxmox API client against a local HTTPS stub of pveproxy (tests/src/pve_stub.rs):
//! the token header, paths and form fields exactly as PVE takes them, TLS by CA file and by
//! sha256 pin, and bad input — 401, 500, a hanging node, a pin or CA that does not match, an
//! unknown vmid, a token file others can read — each a clear error with nothing half-applied.
//! No root needed.

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use integration_test::{
    KEEPER,
    pve_stub::{MIB, Mode, PveStub, SECRET, StubVm, TOKEN_ID},
};
use keeper::device::proxmox::{Client, ProxmoxError, read_token};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keeper-pve-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stub() -> PveStub {
    PveStub::start(
        "pve1",
        [
            (101, StubVm::running(2048 * MIB)),
            (102, StubVm::running(1024 * MIB)),
        ],
    )
}

#[test]
fn header_paths_and_form_fields_are_exactly_what_pve_takes() {
    let stub = stub();
    let d = dir("exact");
    let api = Client::from_file(&stub.write_config(&d, None)).unwrap();
    let s = api.status(101).unwrap();
    assert_eq!((s.status.as_str(), s.maxmem), ("running", Some(2048 * MIB)));
    assert_eq!(s.balloon, Some(2048 * MIB));
    api.set_balloon(101, 512).unwrap();
    assert_eq!(stub.vm(101).config_balloon, Some(512));
    assert_eq!(api.status(101).unwrap().balloon, Some(512 * MIB));
    let seen = stub.seen();
    let auth = format!("PVEAPIToken={TOKEN_ID}={SECRET}");
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some(auth.as_str())),
        "{seen:?}"
    );
    let lines: Vec<_> = seen
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        lines,
        [
            "GET /api2/json/nodes/pve1/qemu/101/status/current",
            "PUT /api2/json/nodes/pve1/qemu/101/config",
            "GET /api2/json/nodes/pve1/qemu/101/status/current",
        ]
    );
    let put = &seen[1];
    assert_eq!(
        put.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        put.form.iter().collect::<Vec<_>>(),
        [(&"balloon".to_string(), &"512".to_string())]
    );
    let list = api.vms().unwrap();
    assert_eq!(list.iter().map(|v| v.vmid).collect::<Vec<_>>(), [101, 102]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn hibernate_and_start_give_the_vm_back_with_its_state() {
    let stub = stub();
    let d = dir("hibernate");
    let api = Client::from_file(&stub.write_config(&d, None)).unwrap();
    let upid = api.hibernate(102).unwrap();
    assert!(upid.starts_with("UPID:pve1:"), "{upid}");
    let s = api.status(102).unwrap();
    assert_eq!(
        (s.status.as_str(), s.lock.as_deref()),
        ("stopped", Some("suspended"))
    );
    let w = stub.writes();
    assert_eq!(w[0].path, "/api2/json/nodes/pve1/qemu/102/status/suspend");
    assert_eq!(w[0].form.get("todisk").map(String::as_str), Some("1"));
    api.start(102).unwrap();
    assert_eq!(stub.vm(102).status, "running");
    // Starting a running VM: PVE's own message, as an error.
    let e = api.start(102).unwrap_err().to_string();
    assert!(e.contains("HTTP 500 VM 102 already running"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_sha256_pin_is_enough_and_a_wrong_one_sends_nothing() {
    let stub = stub();
    let d = dir("pin");
    let api = Client::from_file(&stub.write_config(&d, Some(stub.fingerprint))).unwrap();
    assert_eq!(api.status(101).unwrap().status, "running");
    let before = stub.seen().len();
    let mut wrong = stub.fingerprint;
    wrong[0] ^= 0xff;
    let api = Client::from_file(&stub.write_config(&d, Some(wrong))).unwrap();
    let e = api.set_balloon(101, 256).unwrap_err();
    assert!(matches!(e, ProxmoxError::PinMismatch { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("does not match the pinned fingerprint") && text.contains(&stub.url()),
        "{text}"
    );
    assert_eq!(
        stub.seen().len(),
        before,
        "a request went to an unpinned node"
    );
    assert_eq!(stub.vm(101).config_balloon, None);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn another_ca_is_refused() {
    let stub = stub();
    let other = PveStub::start("pve1", []);
    let d = dir("ca");
    let file = stub.write_config(&d, None);
    std::fs::write(d.join("pve-root-ca.pem"), &other.ca_pem).unwrap();
    let e = Client::from_file(&file)
        .unwrap()
        .status(101)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid peer certificate"), "{e}");
    assert!(stub.seen().is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_wrong_token_is_a_401_and_changes_nothing() {
    let stub = stub();
    let d = dir("401");
    let file = stub.write_config(&d, None);
    std::fs::write(
        d.join("pve-token"),
        format!("{TOKEN_ID}=00000000-dead-beef\n"),
    )
    .unwrap();
    let e = Client::from_file(&file)
        .unwrap()
        .set_balloon(101, 256)
        .unwrap_err();
    assert!(e.is_auth(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("PUT https://127.0.0.1:")
            && text
                .contains("/api2/json/nodes/pve1/qemu/101/config: HTTP 401 invalid token value!"),
        "{text}"
    );
    assert_eq!(stub.vm(101).config_balloon, None);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn server_errors_and_unknown_vms_say_what_pve_said() {
    let stub = stub();
    let d = dir("500");
    let api = Client::from_file(&stub.write_config(&d, None)).unwrap();
    let e = api.status(999).unwrap_err().to_string();
    assert!(
        e.contains("HTTP 500 Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist"),
        "{e}"
    );
    stub.set_mode(Mode::Fail500);
    let e = api.hibernate(101).unwrap_err().to_string();
    assert!(e.contains("HTTP 500 cluster not ready - no quorum?"), "{e}");
    assert_eq!(stub.vm(101).status, "running");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_hanging_node_times_out() {
    let stub = stub();
    stub.set_mode(Mode::Hang);
    let d = dir("hang");
    let file = stub.write_config(&d, None);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("timeout: 2s", "timeout: 400ms");
    std::fs::write(&file, text).unwrap();
    let api = Client::from_file(&file).unwrap();
    let t = Instant::now();
    let e = api.set_balloon(101, 256).unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, ProxmoxError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("no answer within 400ms"), "{e}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn token_and_config_files_are_checked_before_any_call() {
    let d = dir("files");
    let token = d.join("token");
    std::fs::write(&token, format!("{TOKEN_ID}={SECRET}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = read_token(&token).unwrap_err().to_string();
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        read_token(&token).unwrap(),
        (TOKEN_ID.to_string(), SECRET.to_string())
    );
    // Owned by someone else (root can chown): refused, whatever its mode.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&token, Some(65534), None).unwrap();
        let e = read_token(&token).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(&token, Some(0), None).unwrap();
    }
    std::fs::write(&token, "root@pam=secret-without-token-id\n").unwrap();
    let e = read_token(&token).unwrap_err().to_string();
    assert!(e.contains("USER@REALM!TOKENID=SECRET"), "{e}");

    let cfg = d.join("proxmox.yaml");
    let cases = [
        (
            "url: https://h\nnode: pve1\ntoken_file: token\n",
            "no ca_file and no fingerprint",
        ),
        (
            "url: http://h\nnode: pve1\ntoken_file: token\nfingerprint: AA\n",
            "must start with https://",
        ),
        (
            "url: https://h\nnode: pve1\ntoken_file: token\nfingerprint: AA:BB\n",
            "not a sha256 fingerprint",
        ),
        (
            "url: https://h\nnode: pve1\ntoken_file: token\nca_file: x\nfingerprnt: AA\n",
            "proxmox.yaml:5:1: unknown key `fingerprnt` (did you mean `fingerprint`?)",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&cfg, text).unwrap();
        let e = Client::from_file(&cfg).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains(&cfg.display().to_string()),
            "{text:?}: {e}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn keeper_vm_list_and_balloon_through_the_api() {
    let stub = stub();
    let d = dir("cli");
    let file = stub.write_config(&d, None);
    let out = Command::new(KEEPER)
        .args(["vm", "list", "--proxmox"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("101 running") && text.contains("2048 MiB"),
        "{text}"
    );
    let out = Command::new(KEEPER)
        .args(["vm", "balloon", "101", "1GiB", "--wait", "2s", "--proxmox"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stub.vm(101).config_balloon, Some(1024));
    // Above the VM's memory: refused from the status alone, nothing written.
    let writes = stub.writes().len();
    let out = Command::new(KEEPER)
        .args(["vm", "balloon", "102", "4GiB", "--proxmox"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("above its maximum memory"),
        "{err}"
    );
    assert_eq!(stub.writes().len(), writes);
    let _ = std::fs::remove_dir_all(&d);
}
