//! The deployment files checked with the tools that know their formats: `systemd-analyze` for the
//! unit (valid, and hardened: its own exposure score), kubernetes-validate for the DaemonSet
//! (the Kubernetes API schema, strictly: no unknown field), promtool for the alert rules (and
//! their unit tests). The Grafana dashboard's queries and the OOM alert are checked against a
//! real Prometheus in `serve.rs`.

use crate::common;
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_systemd_unit_verifies_and_keeps_least_privilege() {
    require_tool!("systemd-analyze");
    let unit = fs::read_to_string(repo("deploy/systemd/memtrace.service")).unwrap();
    for line in [
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ExecStart=/usr/local/bin/memtrace serve --listen 127.0.0.1:9633",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line:?}"
        );
    }
    // verify wants the binary to exist: check a copy that runs the one just built.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("unit");
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("memtrace.service");
    fs::write(
        &copy,
        unit.replace("/usr/local/bin/memtrace", env!("CARGO_BIN_EXE_memtrace")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {verify:?}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for memtrace.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    // systemd rates 0-10; under 5 is "OK" or better.
    assert!(exposure < 5.0, "exposure {exposure}:\n{text}");
}

#[test]
fn the_daemonset_matches_the_kubernetes_schema_strictly() {
    let tools = repo(".tools/python");
    if !tools.join("kubernetes_validate").is_dir() {
        common::skip(
            test_name!(),
            "kubernetes-validate is not in .tools/python (`cargo xtask setup` installs it)",
            true,
        );
        return;
    }
    let manifest = repo("deploy/kubernetes/daemonset.yaml");
    for version in ["1.30.0", "1.33.0"] {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .arg(&manifest)
            .env("PYTHONPATH", &tools)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "Kubernetes {version}: {text}"
        );
        assert_eq!(
            text.matches("passed").count(),
            2,
            "namespace and daemonset: {text}"
        );
    }
    let manifest = fs::read_to_string(&manifest).unwrap();
    assert!(manifest.contains("privileged: false") && manifest.contains("drop: [\"ALL\"]"));
    assert!(
        manifest.contains("hostPID: true") && manifest.contains("prometheus.io/scrape: \"true\"")
    );
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    require_tool!("promtool");
    let dir = repo("deploy/prometheus");
    for args in [
        &["check", "rules", "memtrace-rules.yml"][..],
        &["test", "rules", "memtrace-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_prometheusrule_carries_the_same_rules() {
    let tools = repo(".tools/python");
    if !tools.join("yaml").is_dir() {
        common::skip(
            test_name!(),
            "PyYAML is not in .tools/python (`cargo xtask setup` installs it with kubernetes-validate)",
            true,
        );
        return;
    }
    let script = "import sys, yaml\n\
rules = yaml.safe_load(open(sys.argv[1]))\n\
crd = yaml.safe_load(open(sys.argv[2]))\n\
assert crd['apiVersion'] == 'monitoring.coreos.com/v1' and crd['kind'] == 'PrometheusRule', crd\n\
assert crd['spec']['groups'] == rules['groups'], 'the groups differ'\n\
print(len(rules['groups'][0]['rules']))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(repo("deploy/prometheus/memtrace-rules.yml"))
        .arg(repo("deploy/kubernetes/prometheusrule.yaml"))
        .env("PYTHONPATH", &tools)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both parsed, and compared rule by rule (not two empty lists).
    let alerts = fs::read_to_string(repo("deploy/prometheus/memtrace-rules.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert!(alerts >= 6);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        alerts.to_string(),
        "every rule compared"
    );
}
