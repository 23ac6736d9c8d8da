//! The `fleet-agent` binary's edges: invalid configuration exits 2 naming the key; status reads
//! the data directory.

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(args)
        .output()
        .expect("run fleet-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(&cfg, "device_id: pi-01\ngit:\n  endpoints: [{ url: git://127.0.0.1/f.git }]\nhealth_windw: 30s\n").expect("write");
    let path = cfg.to_str().expect("utf-8 path");
    let (code, _out, err) = agent(&["check-config", "--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{path}:4:1: error: unknown key `health_windw`")),
        "{err}"
    );
    assert!(err.contains("did you mean `health_window`?"), "{err}");
    let (code, _, err) = agent(&["status", "--config", path]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn missing_config_exits_2() {
    let (code, _, err) = agent(&["check-config", "--config", "/nonexistent/agent.yaml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read agent configuration /nonexistent/agent.yaml"),
        "{err}"
    );
}

#[test]
fn status_of_a_fresh_device() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("agent.yaml");
    let data = tmp.path().join("data");
    std::fs::write(
        &cfg,
        format!("device_id: pi-01\ndata_dir: {}\ngit:\n  endpoints: [{{ url: git://127.0.0.1/f.git }}]\n", data.display()),
    )
    .expect("write");
    let path = cfg.to_str().expect("utf-8 path");
    let (code, out, err) = agent(&["status", "--config", path, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["device_id"], "pi-01");
    assert_eq!(v["mode"], "standalone");
    assert_eq!(v["phase"], "idle");
    assert!(v["current"].is_null());
}

#[test]
fn status_of_a_device_waiting_for_approval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("agent.yaml");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("pairing-code"), "K7PQ2MXD\n").expect("code");
    std::fs::write(
        &cfg,
        format!(
            "device_id: pi-01\ndata_dir: {}\ngit:\n  endpoints: [{{ url: git://127.0.0.1/f.git }}]\ncontroller:\n  url: https://controller:8443\n  token_file: {}\n  request_timeout: 5s\n",
            data.display(),
            tmp.path().join("device-token").display()
        ),
    )
    .expect("write");
    let path = cfg.to_str().expect("utf-8 path");
    let (code, out, err) = agent(&["check-config", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("controller mode"), "{out}");
    let (code, out, err) = agent(&["status", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(controller mode)"), "{out}");
    assert!(
        out.contains(
            "pairing:    K7PQ2MXD: waiting for approval (`fleetctl devices approve K7PQ2MXD`)"
        ),
        "{out}"
    );
    assert!(out.contains("check-in:   never"), "{out}");
    let (code, out, err) = agent(&["status", "--config", path, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["mode"], "controller");
    assert_eq!(v["controller"]["pairing_code"], "K7PQ2MXD");
    assert_eq!(v["controller"]["enrolled"], false);
}

#[test]
fn logging_loki_is_checked_with_line_and_column() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("agent.yaml");
    let base = "device_id: pi-01\ngit:\n  endpoints: [git://127.0.0.1/f.git]\n";
    std::fs::write(
        &cfg,
        format!("{base}logging:\n  loki:\n    url: ftp://loki:3100\n    labels: {{ site: berlin, 9x: y, level: z }}\n    tenat: fleet\n"),
    )
    .expect("write");
    let path = cfg.to_str().expect("utf-8 path");
    let (code, _out, err) = agent(&["check-config", "--config", path]);
    assert_eq!(code, 2, "{err}");
    for want in [
        format!("{path}:6:10: error: `logging.loki.url` `ftp://loki:3100` must start with http:// or https://, not ftp://"),
        format!("{path}:7:29: error: label name `9x` in `logging.loki.labels` is not a valid Loki label name"),
        format!("{path}:7:36: error: label name `level` in `logging.loki.labels` is set by Fleet itself"),
        format!("{path}:8:5: error: unknown key `tenat` in `logging.loki` (did you mean `tenant`?)"),
    ] {
        assert!(err.contains(&want), "missing `{want}` in\n{err}");
    }
    std::fs::write(
        &cfg,
        format!("{base}logging:\n  loki:\n    url: http://127.0.0.1:3100/\n    labels: {{ site: berlin }}\n"),
    )
    .expect("write");
    let (code, out, err) = agent(&["check-config", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("logs pushed to Loki at http://127.0.0.1:3100/loki/api/v1/push"),
        "{out}"
    );
}
