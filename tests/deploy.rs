//! The deployment artefacts under `deploy/` and the example configs under `conf/`,
//! checked with the tools their ecosystems use, and against each other:
//!
//! - `deploy/docker/Dockerfile`: hadolint; the files it copies are enough for
//!   `cargo --locked`; its HEALTHCHECK command works against a running gateway.
//! - `deploy/systemd/nxgate.service`: `systemd-analyze verify` and `security`; its
//!   `ExecStartPre` command line runs; its credentials are the ones `conf/edge.yaml` reads.
//! - `deploy/kubernetes/**.yaml`: kubernetes-validate, strict, for Kubernetes
//!   [`KUBERNETES_VERSION`]; ConfigMaps hold `conf/*.yaml` verbatim; probes, ports,
//!   secrets and grace periods agree with those configs.
//! - `conf/*.yaml`: `nxgate check`, with every secret they name supplied as a dummy.
//! - `conf/sidecar.yaml` served as written (only its listen, admin and upstream addresses
//!   moved to loopback ports and the emulator), with demo traffic through it.
//!
//! The external tools are installed by `scripts/install-deploy-tools.sh`. A missing tool
//! fails the test (it never skips), naming that script.

mod common;

use common::*;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The Kubernetes version the manifests are validated against (schemas shipped by
/// kubernetes-validate, pinned in scripts/install-deploy-tools.sh).
const KUBERNETES_VERSION: &str = "1.37.0";

/// Highest accepted `systemd-analyze security` exposure, in tenths (15 = 1.5 of 10).
const SYSTEMD_EXPOSURE_THRESHOLD: &str = "15";

/// The Dockerfile's HEALTHCHECK command, as the brief for the image fixes it.
const HEALTHCHECK: [&str; 4] = ["/usr/local/bin/nxgate", "healthcheck", "--url", "http://127.0.0.1:9090/healthz"];

/// The UID:GID the image runs as (and the manifests' runAsUser/runAsGroup).
const IMAGE_USER: &str = "10001:10001";

/// Seconds nxgate's runtimes get after the drain grace (server::RUNTIME_SHUTDOWN_SECS).
const RUNTIME_WIND_DOWN_SECS: i64 = 5;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// An external tool, found on PATH; fails (never skips) when it is missing.
fn tool(name: &str) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file());
    let Some(found) = found else {
        panic!(
            "`{name}` is not on PATH: the deploy checks need it. \
             Run `bash scripts/install-deploy-tools.sh` (installs hadolint, kubernetes-validate \
             and systemd-analyze), then run the tests again."
        )
    };
    Command::new(found)
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn version(name: &str, arg: &str) -> String {
    let out = run(tool(name).arg(arg));
    text(&out).lines().next().unwrap_or_default().trim().to_owned()
}

/// Every YAML document of a file (empty documents dropped).
fn yaml_docs(rel: &str) -> Vec<Value> {
    let src = read(rel);
    serde_yaml::Deserializer::from_str(&src)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("expected an integer, got {v:?}"))
}

/// Files under `dir` (recursively) whose names end with `.yaml`.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------- Docker

#[test]
fn dockerfile_lints_clean_with_hadolint() {
    // An explicit config, so no user or repository hadolint config can relax the rules:
    // any finding, down to style, fails.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hadolint.yaml");
    std::fs::write(&config, "failure-threshold: style\n").unwrap();
    let out = run(tool("hadolint")
        .arg("--no-color")
        .arg("--config")
        .arg(&config)
        .arg(repo().join("deploy/docker/Dockerfile")));
    eprintln!("{}", version("hadolint", "--version"));
    assert!(out.status.success() && text(&out).trim().is_empty(), "hadolint findings:\n{}", text(&out));
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in read("deploy/docker/Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[test]
fn dockerfile_builds_from_a_locked_release_and_bakes_in_no_config_or_secret() {
    let ins = dockerfile_instructions();
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build and a runtime stage: {froms:?}");
    assert!(froms[0].starts_with("FROM rust:1-bookworm AS "), "{}", froms[0]);
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    let build_stage: Vec<&String> = ins.iter().take_while(|i| *i != froms[1]).collect();
    let runtime_stage: Vec<&String> = ins.iter().skip_while(|i| *i != froms[1]).collect();
    assert!(
        build_stage.iter().any(|i| i.contains("apt-get install") && i.contains(" cmake")),
        "builder installs cmake"
    );
    assert!(
        build_stage.iter().any(|i| i.contains("cargo build --release --locked --no-default-features")),
        "release build from the lock file, without the emulator and the test kit"
    );
    let runtime_installs: Vec<&&String> = runtime_stage.iter().filter(|i| i.contains("apt-get install")).collect();
    assert_eq!(runtime_installs.len(), 1);
    let pkgs: Vec<&str> = runtime_installs[0]
        .split("apt-get install")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert_eq!(pkgs, ["ca-certificates"], "the runtime installs only ca-certificates");
    // Runtime stage: only the binary comes in, from the build stage.
    let copies: Vec<&&String> =
        runtime_stage.iter().filter(|i| i.starts_with("COPY ") || i.starts_with("ADD ")).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(
        copies[0].starts_with("COPY --from=build ") && copies[0].ends_with(" /usr/local/bin/nxgate"),
        "{}",
        copies[0]
    );
    // No instruction mentions a config file or a secret location as a source.
    for i in &ins {
        if i.starts_with("COPY ") || i.starts_with("ADD ") {
            assert!(
                !i.contains("conf") && !i.contains("secret") && !i.contains(".yaml"),
                "bakes in a config or secret: {i}"
            );
        }
    }
    assert!(!ins.iter().any(|i| i.starts_with("ENV ") && i.to_lowercase().contains("secret")), "no secret in ENV");
    let user: Vec<&String> = ins.iter().filter(|i| i.starts_with("USER ")).collect();
    assert_eq!(user.len(), 1);
    assert_eq!(user[0].as_str(), format!("USER {IMAGE_USER}"), "numeric non-root user");
    assert_eq!(ins.last().map(String::as_str), Some(r#"CMD ["run", "-c", "/etc/nxgate/nxgate.yaml"]"#));
    let healthcheck: Vec<&String> = ins.iter().filter(|i| i.starts_with("HEALTHCHECK ")).collect();
    assert_eq!(healthcheck.len(), 1);
    let cmd = healthcheck[0].split(" CMD ").nth(1).expect("HEALTHCHECK ... CMD [...]");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("exec-form CMD");
    assert_eq!(cmd, HEALTHCHECK);
}

#[test]
fn dockerfile_build_context_is_enough_for_a_locked_build() {
    // The files the build stage copies from the context, as the Dockerfile names them.
    let ins = dockerfile_instructions();
    let mut sources = Vec::new();
    for i in ins.iter().filter(|i| i.starts_with("COPY ") && !i.contains("--from=")) {
        let words: Vec<&str> = i.split_whitespace().skip(1).filter(|w| !w.starts_with("--")).collect();
        sources.extend(words[..words.len() - 1].iter().map(|w| w.trim_end_matches('/').to_owned()));
    }
    assert_eq!(
        sources,
        [
            "Cargo.toml",
            "Cargo.lock",
            "src",
            "benches",
            "crates",
            "fuzz/Cargo.toml",
            "fuzz/fuzz_targets",
            "bench/pingora-passthrough/Cargo.toml",
            "bench/pingora-passthrough/src",
        ]
    );
    // The Dockerfile's own ignore file lets exactly those into the context.
    let ignore = read("deploy/docker/Dockerfile.dockerignore");
    let rules: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), "the context is an allow-list");
    let allowed: BTreeSet<&str> =
        rules[1..].iter().map(|r| r.strip_prefix('!').expect("only ! rules after *").trim_end_matches('/')).collect();
    assert_eq!(allowed, sources.iter().map(String::as_str).collect());
    // With only those files, cargo resolves every target and the lock file as it stands
    // (no image build here: no Docker engine). `fetch --locked` fails if the manifest
    // names a target whose file is not copied, or if Cargo.lock would have to change.
    let ctx = tempfile::tempdir().unwrap();
    for src in &sources {
        let to = ctx.path().join(src);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        copy_tree(&repo().join(src), &to);
    }
    let host = String::from_utf8(run(Command::new("rustc").arg("-vV")).stdout).unwrap();
    let host = host.lines().find_map(|l| l.strip_prefix("host: ")).unwrap().to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out =
        run(Command::new(cargo).current_dir(ctx.path()).args(["fetch", "--locked", "--offline", "--target", &host]));
    assert!(out.status.success(), "cargo fetch --locked in the Docker build context failed:\n{}", text(&out));
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

// ---------------------------------------------------------------- systemd

/// `key=value` settings of one section of a unit file, in order (repeats kept).
fn unit_settings(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut cur = String::new();
    let mut out = Vec::new();
    for line in unit.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            cur = t.trim_matches(['[', ']']).to_owned();
        } else if cur == section && !t.is_empty() && !t.starts_with('#') {
            let (k, v) = t.split_once('=').unwrap_or_else(|| panic!("not key=value: {t}"));
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

fn unit_values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// The unit with /usr/local/bin/nxgate replaced by the binary cargo built, written as
/// `nxgate.service` (the name decides the credentials directory) in `dir`.
/// `systemd-analyze verify` checks that every Exec*= binary exists and is executable;
/// the unit names the installed path, which does not exist on a build machine.
fn unit_for_this_machine(dir: &Path) -> PathBuf {
    let unit = read("deploy/systemd/nxgate.service");
    assert!(unit.contains("/usr/local/bin/nxgate "), "the unit runs /usr/local/bin/nxgate");
    let path = dir.join("nxgate.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/nxgate", env!("CARGO_BIN_EXE_nxgate"))).unwrap();
    path
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_machine(dir.path());
    eprintln!("{}", version("systemd-analyze", "--version"));
    let out = run(tool("systemd-analyze").args(["verify", "--man=no"]).arg(&unit));
    // verify exits 0 on unknown keys and unparsable values (it only warns): any output fails.
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));

    let out = run(tool("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", &format!("--threshold={SYSTEMD_EXPOSURE_THRESHOLD}")])
        .arg(&unit));
    let report = text(&out);
    eprintln!("{}", report.lines().last().unwrap_or_default());
    assert!(out.status.success(), "exposure above {SYSTEMD_EXPOSURE_THRESHOLD}/100:\n{report}");

    let settings = unit_settings(&read("deploy/systemd/nxgate.service"), "Service");
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert!(unit_values(&settings, key).contains(&want), "{key}={want} missing");
    }
    assert!(!unit_values(&settings, "RestrictAddressFamilies").is_empty());
}

#[test]
fn systemd_unit_commands_and_credentials_match_the_edge_config() {
    let settings = unit_settings(&read("deploy/systemd/nxgate.service"), "Service");
    let edge = yaml("conf/edge.yaml");

    // Every secret the edge config reads is a credential the unit loads, at the path
    // systemd gives it, and the other way round.
    let prefix = "/run/credentials/nxgate.service/";
    let tls = &edge["callbacks"]["tls"];
    let tls_files = [s(&tls["cert_file"]), s(&tls["key_file"])];
    let signing = s(&edge["callbacks"]["signing_secret_file"]);
    let wanted: BTreeSet<String> = edge["tenants"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| s(&t["secret_file"]))
        .chain(tls_files)
        .chain([signing])
        .map(|f| {
            f.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("edge secret or TLS file {f} is not under {prefix}"))
                .to_owned()
        })
        .collect();
    let loaded: BTreeSet<String> =
        unit_values(&settings, "LoadCredential").iter().map(|v| v.split_once(':').unwrap().0.to_owned()).collect();
    assert_eq!(wanted, loaded, "conf/edge.yaml secret files vs LoadCredential=");

    // The callback outbox's file is in the directory systemd keeps for the unit (under
    // ProtectSystem=strict the only writable place that survives a restart).
    assert_eq!(s(&edge["state"]["kind"]), "embedded");
    assert_eq!(unit_values(&settings, "StateDirectory"), vec!["nxgate"]);
    assert_eq!(s(&edge["state"]["dir"]), "/var/lib/nxgate");

    // Stopping waits out the drain: TimeoutStopSec above the grace plus the wind-down.
    let stop: i64 = unit_values(&settings, "TimeoutStopSec")[0].parse().unwrap();
    let grace = int(&edge["shutdown_grace_secs"]);
    assert!(stop > grace + RUNTIME_WIND_DOWN_SECS, "TimeoutStopSec={stop} vs shutdown_grace_secs {grace}");

    // The unit's ExecStartPre runs as written (log format from the env example, the
    // config path pointed at conf/edge.yaml with dummy credentials).
    let env_example = read("deploy/systemd/nxgate.env.example");
    let env: Vec<(&str, &str)> = env_example
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').unwrap_or_else(|| panic!("nxgate.env.example: not KEY=VALUE: {l}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let (cert_pem, key_pem) = dummy_tls_pair();
    for name in &loaded {
        let contents = match name {
            n if tls_files[0].ends_with(n.as_str()) => cert_pem.clone(),
            n if tls_files[1].ends_with(n.as_str()) => key_pem.clone(),
            n if signing.ends_with(n.as_str()) => format!("{DUMMY_WHSEC}\n"),
            _ => "dummy-secret-for-the-unit-test\n".to_owned(),
        };
        std::fs::write(creds.join(name), contents).unwrap();
    }
    let config = dir.path().join("nxgate.yaml");
    std::fs::write(&config, read("conf/edge.yaml").replace(prefix, &format!("{}/", creds.display()))).unwrap();
    for key in ["ExecStartPre", "ExecReload"] {
        let line = unit_values(&settings, key)[0];
        let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], "/usr/local/bin/nxgate");
        for w in words.iter_mut() {
            for (k, v) in &env {
                *w = w.replace(&format!("${{{k}}}"), v);
            }
            if w == "/etc/nxgate/nxgate.yaml" {
                *w = config.display().to_string();
            }
        }
        assert!(!words.iter().any(|w| w.contains('$')), "{key}: unexpanded variable in {words:?}");
        let out = run(Command::new(nxgate_bin()).args(&words[1..]).env_clear().envs(env.iter().copied()));
        assert!(out.status.success() && text(&out).contains("config OK"), "{key} {words:?}:\n{}", text(&out));
    }
    // And ExecStart is the same binary serving the same file.
    let exec = unit_values(&settings, "ExecStart")[0];
    assert!(exec.starts_with("/usr/local/bin/nxgate ") && exec.ends_with(" run -c /etc/nxgate/nxgate.yaml"), "{exec}");
}

// ---------------------------------------------------------------- Kubernetes

#[test]
fn kubernetes_manifests_validate_strictly() {
    let files = yaml_files(&repo().join("deploy/kubernetes"));
    assert!(files.len() >= 8, "expected the sidecar and central manifests, found {files:?}");
    eprintln!("kubernetes-validate {}", version("kubernetes-validate", "--version"));
    let out =
        run(tool("kubernetes-validate").args(["--strict", "--kubernetes-version", KUBERNETES_VERSION]).args(&files));
    let report = text(&out);
    eprintln!("{report}");
    assert!(out.status.success(), "kubernetes-validate failed:\n{report}");
    let major_minor = KUBERNETES_VERSION.rsplit_once('.').unwrap().0;
    for f in &files {
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        let docs = yaml_docs(&rel).len();
        assert!(docs > 0, "{rel} holds no resource");
        let passed = report
            .lines()
            .filter(|l| {
                l.contains(&rel)
                    && l.contains("passed for resource")
                    && l.ends_with(&format!("against version {major_minor}"))
            })
            .count();
        assert_eq!(passed, docs, "every resource of {rel} validated against {major_minor}:\n{report}");
    }
}

/// Every resource under a directory, as (kind, resource).
fn resources(dir: &str) -> Vec<(String, Value)> {
    yaml_files(&repo().join(dir))
        .iter()
        .flat_map(|f| yaml_docs(&f.strip_prefix(repo()).unwrap().display().to_string()))
        .map(|r| (s(&r["kind"]).to_owned(), r))
        .collect()
}

fn one<'a>(res: &'a [(String, Value)], kind: &str) -> &'a Value {
    let all: Vec<&Value> = res.iter().filter(|(k, _)| k == kind).map(|(_, r)| r).collect();
    assert_eq!(all.len(), 1, "exactly one {kind}");
    all[0]
}

/// The nxgate container of a pod spec (a native sidecar counts).
fn nxgate_container(pod: &Value) -> &Value {
    pod["containers"]
        .as_sequence()
        .into_iter()
        .chain(pod["initContainers"].as_sequence())
        .flatten()
        .find(|c| s(&c["name"]) == "nxgate")
        .expect("a container named nxgate")
}

/// What every nxgate pod needs whatever the shape: the mounted config is `conf_file`
/// verbatim, probes on the admin port, the image's user, a read-only root with /tmp
/// writable, and a termination grace above the drain.
fn check_nxgate_pod(res: &[(String, Value)], conf_file: &str) -> Value {
    let config_text = read(conf_file);
    let config: Value = serde_yaml::from_str(&config_text).unwrap();
    let cm = one(res, "ConfigMap");
    assert_eq!(
        s(&cm["data"]["nxgate.yaml"]),
        config_text,
        "ConfigMap {} is not {conf_file} verbatim",
        s(&cm["metadata"]["name"])
    );

    let deployment = one(res, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = nxgate_container(pod);
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(s).collect();
    assert_eq!(&args[args.len() - 3..], ["run", "-c", "/etc/nxgate/nxgate.yaml"]);
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount = |path: &str| {
        mounts.iter().find(|m| s(&m["mountPath"]) == path).unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let config_volume = s(&mount("/etc/nxgate")["name"]);
    let volume =
        |name: &str| pod["volumes"].as_sequence().unwrap().iter().find(|v| s(&v["name"]) == name).unwrap().clone();
    assert_eq!(s(&volume(config_volume)["configMap"]["name"]), s(&cm["metadata"]["name"]));
    assert!(mount("/etc/nxgate")["subPath"].is_null(), "a subPath mount would never see ConfigMap updates");
    assert!(!volume(s(&mount("/tmp")["name"]))["emptyDir"].is_null(), "/tmp is a writable emptyDir");

    // Probes and metrics on the admin port, which the config opens on the pod IP.
    assert_eq!(s(&config["admin_listen"]), "0.0.0.0:9090", "{conf_file}: the kubelet probes the pod IP");
    let admin_port = c["ports"].as_sequence().unwrap().iter().find(|p| s(&p["name"]) == "admin").expect("admin port");
    assert_eq!(int(&admin_port["containerPort"]), 9090);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/readyz")] {
        assert_eq!(s(&c[probe]["httpGet"]["path"]), path, "{probe}");
        assert_eq!(s(&c[probe]["httpGet"]["port"]), "admin", "{probe}");
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(s(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(s(&annotations["prometheus.io/port"]), "9090");
    assert_eq!(s(&annotations["prometheus.io/path"]), "/metrics");

    // Security: the restricted profile, as the image's own user.
    let pod_sc = &pod["securityContext"];
    let sc = &c["securityContext"];
    let either = |k: &str| if sc[k].is_null() { pod_sc[k].clone() } else { sc[k].clone() };
    assert_eq!(either("runAsNonRoot").as_bool(), Some(true));
    let (uid, gid) = IMAGE_USER.split_once(':').unwrap();
    assert_eq!(int(&either("runAsUser")).to_string(), uid);
    assert_eq!(int(&either("runAsGroup")).to_string(), gid);
    assert_eq!(s(&either("seccompProfile")["type"]), "RuntimeDefault");
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"], Value::from(vec!["ALL"]));
    for k in ["requests", "limits"] {
        assert!(!c["resources"][k]["memory"].is_null() && !c["resources"][k]["cpu"].is_null(), "resources.{k}");
    }

    // The pod may take longer to stop than nxgate takes to drain.
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64().unwrap_or(0);
    let grace = config["shutdown_grace_secs"].as_i64().unwrap_or(30);
    let termination = int(&pod["terminationGracePeriodSeconds"]);
    assert!(termination > pre_stop + grace + RUNTIME_WIND_DOWN_SECS, "terminationGracePeriodSeconds {termination}");
    config
}

#[test]
fn kubernetes_sidecar_serves_its_app_on_loopback_with_a_default_tenant() {
    let res = resources("deploy/kubernetes/sidecar");
    let config = check_nxgate_pod(&res, "conf/sidecar.yaml");
    assert_eq!(config["listen"], Value::from(vec!["127.0.0.1:8080"]), "loopback: only the pod's app can call it");
    let default = s(&config["default_tenant"]);
    let tenants = config["tenants"].as_sequence().unwrap();
    assert_eq!(tenants.len(), 1);
    assert_eq!(s(&tenants[0]["name"]), default);

    // The tenant secret comes from a Secret, as the environment variable the config names.
    let pod = &one(&res, "Deployment")["spec"]["template"]["spec"];
    let c = nxgate_container(pod);
    let var = s(&tenants[0]["secret_env"]);
    let env =
        c["env"].as_sequence().unwrap().iter().find(|e| s(&e["name"]) == var).unwrap_or_else(|| panic!("no env {var}"));
    assert!(!env["valueFrom"]["secretKeyRef"]["name"].is_null(), "{var} comes from a Secret");
    assert!(env["value"].is_null(), "{var} must not be inline");
    // nxgate sits beside the application in the same pod.
    assert_eq!(pod["containers"].as_sequence().unwrap().len(), 1, "the application container");
    assert_eq!(s(&c["restartPolicy"]), "Always", "nxgate is a native sidecar");
    assert!(res.iter().all(|(k, _)| k != "Secret"), "no Secret manifest: secrets are never committed");
}

#[test]
fn kubernetes_central_is_redundant_shared_and_scaled() {
    let res = resources("deploy/kubernetes/central");
    let config = check_nxgate_pod(&res, "conf/central.yaml");
    assert_eq!(config["listen"], Value::from(vec!["0.0.0.0:8080"]), "the Service reaches the pod IP");
    assert!(config["default_tenant"].is_null(), "a shared gateway requires client keys");
    assert_eq!(s(&config["rate_limit_backend"]["kind"]), "redis", "limits hold for the fleet");
    assert_eq!(s(&config["state"]["kind"]), "redis", "any replica delivers what another accepted");
    assert_eq!(s(&config["callbacks"]["delivery"]), "queued");
    // The Redis URL (TLS, with an ACL user's password) comes from a Secret, not the ConfigMap.
    let url_env = s(&config["redis"]["url_env"]);
    assert!(config["rate_limit_backend"]["redis_url"].is_null() && config["redis"]["url"].is_null());

    let deployment = one(&res, "Deployment");
    assert!(int(&deployment["spec"]["replicas"]) >= 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let c = nxgate_container(pod);
    let env =
        c["env"].as_sequence().unwrap().iter().find(|e| s(&e["name"]) == url_env).expect("the Redis URL variable");
    assert!(!env["valueFrom"]["secretKeyRef"]["name"].is_null(), "{url_env} comes from a Secret");
    assert!(read("deploy/kubernetes/central/deployment.yaml").contains("--from-literal=url='rediss://"));
    let http = c["ports"].as_sequence().unwrap().iter().find(|p| s(&p["name"]) == "http").expect("http port");
    assert_eq!(int(&http["containerPort"]), 8080);

    // Every secret file the config reads is in the mounted Secret's directory.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    for t in config["tenants"].as_sequence().unwrap() {
        let file = Path::new(s(&t["secret_file"]));
        let dir = file.parent().unwrap().to_str().unwrap();
        let m = mounts.iter().find(|m| s(&m["mountPath"]) == dir).unwrap_or_else(|| panic!("{dir} not mounted"));
        let v = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap();
        assert!(!v["secret"]["secretName"].is_null(), "{dir} is a Secret volume");
    }

    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let services: Vec<&Value> = res.iter().filter(|(k, _)| k == "Service").map(|(_, r)| r).collect();
    let named = |name: &str| *services.iter().find(|v| s(&v["metadata"]["name"]) == name).expect(name);
    let service = named("nxgate");
    assert_eq!(&service["spec"]["selector"], selector);
    assert_eq!(s(&service["spec"]["ports"][0]["targetPort"]), "http");
    assert_eq!(service["spec"]["ports"].as_sequence().unwrap().len(), 1, "the proxy Service publishes only the proxy");

    // The callback port is its own Service, on the container port the config listens on.
    let callbacks = named("nxgate-callbacks");
    assert_eq!(&callbacks["spec"]["selector"], selector);
    assert_eq!(s(&callbacks["spec"]["ports"][0]["targetPort"]), "callbacks");
    let port = c["ports"].as_sequence().unwrap().iter().find(|p| s(&p["name"]) == "callbacks").expect("callbacks port");
    let listen = format!("0.0.0.0:{}", int(&port["containerPort"]));
    assert_eq!(config["callbacks"]["listen"], Value::from(vec![listen]), "the callbacks Service reaches the listener");
    assert_eq!(services.len(), 2);
    let pdb = one(&res, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    let hpa = one(&res, "HorizontalPodAutoscaler");
    assert_eq!(s(&hpa["apiVersion"]), "autoscaling/v2");
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["name"]), s(&deployment["metadata"]["name"]));
    assert!(int(&hpa["spec"]["minReplicas"]) >= 2);
    assert!(int(&pdb["spec"]["minAvailable"]) < int(&hpa["spec"]["minReplicas"]), "a drain can proceed");
    assert!(res.iter().all(|(k, _)| k != "Secret"), "no Secret manifest: secrets are never committed");
}

// ---------------------------------------------------------------- conf/

/// A self-signed certificate and its key (PEM), for configs that name TLS files.
fn dummy_tls_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A well-formed Standard Webhooks secret for the checks (base64 of "dummy-secret-whsec-bytes").
const DUMMY_WHSEC: &str = "whsec_ZHVtbXktc2VjcmV0LXdoc2VjLWJ5dGVz";

/// `nxgate check` on a config with every secret it names supplied as a dummy:
/// environment variables set, files created (the config rewritten to point at them).
fn check_with_dummy_secrets(rel: &str) -> Output {
    let config: Value = serde_yaml::from_str(&read(rel)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = read(rel);
    let mut cmd = Command::new(nxgate_bin());
    cmd.env_clear();
    for (i, t) in config["tenants"].as_sequence().unwrap().iter().enumerate() {
        if let Some(var) = t["secret_env"].as_str() {
            cmd.env(var, format!("dummy-secret-{i}"));
        }
        if let Some(file) = t["secret_file"].as_str() {
            let dummy = dir.path().join(format!("secret-{i}"));
            std::fs::write(&dummy, format!("dummy-secret-{i}\n")).unwrap();
            assert_eq!(text.matches(file).count(), 1, "{rel}: {file} named once");
            text = text.replace(file, &dummy.display().to_string());
        }
    }
    // The Standard Webhooks secret of callback deliveries: a real-looking one, never printed.
    if let Some(file) = config["callbacks"]["signing_secret_file"].as_str() {
        let dummy = dir.path().join("whsec");
        std::fs::write(&dummy, format!("{DUMMY_WHSEC}\n")).unwrap();
        text = text.replace(file, &dummy.display().to_string());
    }
    // The Redis URL from the environment: one with a password, which check must not print.
    if let Some(var) = config["redis"]["url_env"].as_str() {
        cmd.env(var, "rediss://nxgate:dummy-secret-redis@redis.example:6380/0");
    }
    // TLS files (listen_tls, callbacks.tls): a real, throwaway pair.
    let (cert_pem, key_pem) = dummy_tls_pair();
    for (i, tls) in [&config["listen_tls"], &config["callbacks"]["tls"]].into_iter().enumerate() {
        for (field, pem) in [("cert_file", &cert_pem), ("key_file", &key_pem)] {
            if let Some(file) = tls[field].as_str() {
                let dummy = dir.path().join(format!("tls-{i}-{field}.pem"));
                std::fs::write(&dummy, pem).unwrap();
                text = text.replace(file, &dummy.display().to_string());
            }
        }
    }
    let path = dir.path().join(Path::new(rel).file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    run(cmd.args(["check", "-c"]).arg(&path))
}

#[test]
fn every_example_config_passes_nxgate_check() {
    let files = yaml_files(&repo().join("conf"));
    let names: BTreeSet<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for shape in ["sidecar.yaml", "central.yaml", "edge.yaml"] {
        assert!(names.contains(shape), "conf/{shape} is missing");
    }
    for f in &files {
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        let out = check_with_dummy_secrets(&rel);
        let report = text(&out);
        assert!(out.status.success() && report.contains("config OK"), "nxgate check -c {rel}:\n{report}");
        assert!(!report.contains("dummy-secret"), "{rel}: check printed a secret");
        assert!(!report.contains(&DUMMY_WHSEC[6..]), "{rel}: check printed the signing secret");
    }
}

#[test]
fn edge_config_serves_many_teams_by_key_with_tighter_limits() {
    let edge = yaml("conf/edge.yaml");
    assert_eq!(edge["listen"], Value::from(vec!["0.0.0.0:8080"]));
    assert!(edge["default_tenant"].is_null(), "every caller presents a key");
    let tenants = edge["tenants"].as_sequence().unwrap();
    assert!(tenants.len() >= 2);
    for t in tenants {
        assert!(!t["client_keys_sha256"].as_sequence().unwrap().is_empty(), "{}: reachable by key", s(&t["name"]));
        assert!(!t["rate_limit"].is_null() && !t["max_in_flight"].is_null(), "{}: limited", s(&t["name"]));
    }
    let defaults = yaml("conf/nxgate.yaml");
    let limit = |v: &Value, k: &str| int(&v["limits"][k]);
    assert!(limit(&edge, "max_request_body_bytes") < limit(&defaults, "max_request_body_bytes"));
    assert!(int(&edge["upstream"]["total_timeout_ms"]) < int(&defaults["upstream"]["total_timeout_ms"]));

    // The edge: sources restricted where they are known, capped listeners that together
    // stay under the unit's descriptor limit, and the callback allowlist shown commented,
    // since NXCloud publishes no egress ranges.
    assert!(!edge["listen_allow_sources"].as_sequence().unwrap().is_empty());
    assert!(!edge["admin_allow_sources"].as_sequence().unwrap().is_empty());
    let settings = unit_settings(&read("deploy/systemd/nxgate.service"), "Service");
    let nofile: i64 = unit_values(&settings, "LimitNOFILE")[0].parse().unwrap();
    let cap = limit(&edge, "max_connections");
    assert!(cap > 0 && 3 * cap < nofile, "3 listeners x max_connections {cap} vs LimitNOFILE={nofile}");
    assert!(edge["callbacks"]["allow_sources"].is_null());
    assert!(read("conf/edge.yaml").contains("\n  # allow_sources: ["), "the callback allowlist is shown, commented");
}

// ---------------------------------------------------------------- the sidecar, served

/// A gateway started from a config file, its log scanned for secrets when dropped.
/// Replaces exactly one occurrence of `from` with `to`.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once in the example");
    text.replace(from, to)
}

#[test]
fn sidecar_example_serves_unauthenticated_demo_traffic_as_written() {
    let emulator = Emulator::start();
    let (listen, admin) = (any_port(), any_port());
    let written = read("conf/sidecar.yaml");
    // Only the addresses move: the proxy and admin ports to loopback port 0 (the harness
    // reads the bound ports), the upstream to the emulator. Everything else is served as written.
    let yaml = substitute(&written, r#"listen: ["127.0.0.1:8080"]"#, &format!(r#"listen: ["{listen}"]"#));
    let yaml = substitute(&yaml, r#"admin_listen: "0.0.0.0:9090""#, &format!(r#"admin_listen: "{admin}""#));
    let yaml = substitute(&yaml, r#"url: "https://nxbot.nxcloud.com""#, &format!(r#"url: "{}""#, emulator.url()));
    let changed = written.lines().zip(yaml.lines()).filter(|(a, b)| a != b).count();
    assert_eq!((changed, written.lines().count()), (3, yaml.lines().count()));

    // The secret arrives as the environment variable the example names (in the pod, from
    // the Secret); the uuid is the example's own, the vendor's sample account.
    let config: Value = serde_yaml::from_str(&written).unwrap();
    let tenant = &config["tenants"][0];
    assert_eq!(s(&tenant["uuid"]), UUID_A, "the example's uuid is the emulator's known account");
    let var = s(&tenant["secret_env"]);

    // The container's args, as the sidecar Deployment gives them; its environment holds
    // only the variable the example names.
    let mut gw = Gateway::launch(&yaml, &["--log-format", "json"], &[], true, |c| {
        c.env_clear().env(var, SECRET_A).env("RUST_LOG", "debug");
    });
    // The harness waited for the ready file: both listeners accept on these ports.
    let (listen, admin) = (gw.addr, gw.admin.expect("the example has an admin listener"));

    // The app's request: plain, unsigned, no Authorization (default_tenant).
    let resp = client::request(
        listen,
        "POST",
        "/callcentre/api/v3/ping",
        &[("content-type", "application/json")],
        br#"{"data":"hello from the sidecar example"}"#,
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json();
    // code 0: the emulator verified the request signature made with the example's tenant.
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["data"], "hello from the sidecar example", "{v}");
    assert_eq!(resp.header("x-request-id").map(str::len), Some(32));
    for _ in 0..5 {
        let r = client::request(
            listen,
            "POST",
            "/callcentre/api/v3/ping",
            &[("content-type", "application/json")],
            br#"{"data":"again"}"#,
        )
        .unwrap();
        assert_eq!((r.status, r.json()["code"].clone()), (200, serde_json::json!(0)));
    }

    // What the kubelet and Prometheus see on the admin port.
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200)] {
        let r = client::request(admin, "GET", path, &[], b"").unwrap();
        assert_eq!(r.status, status, "{path}: {}", String::from_utf8_lossy(&r.body));
    }

    // The image's HEALTHCHECK command, pointed at this admin port.
    let url = HEALTHCHECK[3].replace("127.0.0.1:9090", &admin.to_string());
    let hc = run(Command::new(env!("CARGO_BIN_EXE_nxgate")).args(&HEALTHCHECK[1..3]).arg(&url));
    assert!(hc.status.success(), "HEALTHCHECK against a healthy gateway:\n{}", text(&hc));

    // SIGTERM (pod deletion, docker stop, systemctl stop): an idle gateway exits 0 well
    // within the grace the manifests and the unit allow.
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("still running 20 s after SIGTERM"));
    assert!(status.success(), "exit after SIGTERM: {status}; log:\n{}", gw.log());
    let hc = run(Command::new(env!("CARGO_BIN_EXE_nxgate")).args(&HEALTHCHECK[1..3]).arg(&url));
    assert!(!hc.status.success(), "HEALTHCHECK must fail once the gateway is gone");
}
