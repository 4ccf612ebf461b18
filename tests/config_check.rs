//! `sluice config check FILE` and `sluice serve --config FILE` on good and bad configs,
//! run as processes (the CLI contract: "validates a config and prints what is wrong, with
//! line numbers"; "unknown keys are errors").

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::Pki;

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.stdin(Stdio::null());
    cmd
}

/// A directory with real certificates and a password file, and a config that uses them.
struct Files {
    dir: tempfile::TempDir,
    pki: Pki,
    password_file: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::Builder::new()
            .prefix("sluice-config-")
            .tempdir()
            .expect("temp dir");
        let pki = Pki::generate(&dir.path().join("pki")).expect("certificates");
        let password_file = dir.path().join("acme.pw");
        std::fs::write(&password_file, "secret\n").expect("password file");
        Files {
            dir,
            pki,
            password_file,
        }
    }

    /// A valid config, one key per line, so tests can point at line numbers.
    fn good_config(&self) -> String {
        format!(
            r#"data_dir = {data:?}

[proxy]
listen = ["127.0.0.1:0"]
tls_cert = {cert:?}
tls_key = {key:?}
sni_suffix = "db.example.test"
require_tls = true
login_timeout_ms = 5000

[defaults.pool]
size = 5

[[tenants]]
id = "acme"
[tenants.backend]
host = "/tmp/sluice-no-such-dir"
port = 5432
tls = "disable"
auth_user = "sluice_auth"
auth_password_file = {pw:?}
"#,
            data = self.dir.path().join("data").display().to_string(),
            cert = self.pki.proxy_cert.display().to_string(),
            key = self.pki.proxy_key.display().to_string(),
            pw = self.password_file.display().to_string(),
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("writing config");
        path
    }
}

fn check(path: &Path) -> Output {
    sluice()
        .args(["config", "check"])
        .arg(path)
        .output()
        .expect("running sluice config check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        + 1
}

/// 1-based line of the `nth` (0-based) line of `text` that starts with `prefix`.
fn nth_line_of(text: &str, prefix: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with(prefix))
        .nth(nth)
        .unwrap_or_else(|| panic!("no line {nth} starting with {prefix:?} in:\n{text}"))
        .0
        + 1
}

/// Asserts that `stderr` has a line naming `line`, `key` and containing `detail`.
fn assert_reported(stderr: &str, line: usize, key: &str, detail: &str) {
    let wanted = format!("line {line}: {key}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&wanted) && l.contains(detail)),
        "expected a line with {wanted:?} and {detail:?} in stderr:\n{stderr}"
    );
}

#[test]
fn a_valid_config_checks_ok() {
    let files = Files::new();
    let path = files.write("good.toml", &files.good_config());
    let out = check(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("OK"), "stdout:\n{stdout}");
    assert!(stdout.contains("1 tenant"), "stdout:\n{stdout}");
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let files = Files::new();
    let config = files.good_config().replace(
        "login_timeout_ms = 5000",
        "login_timeout_ms = 5000\nlogin_timout_ms = 10",
    );
    let line = line_of(&config, "login_timout_ms");
    let path = files.write("typo.toml", &config);
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a typo must fail the check; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("login_timout_ms"),
        "stderr must name the key:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("line {line}")),
        "stderr must name line {line}:\n{stderr}"
    );
    assert!(text(&out.stdout).is_empty() || !text(&out.stdout).contains("OK"));

    // The same for a typo inside an array of tables.
    let config = files.good_config().replace(
        "auth_user = \"sluice_auth\"",
        "auth_user = \"sluice_auth\"\nauth_usr = \"x\"",
    );
    let line = line_of(&config, "auth_usr");
    let out = check(&files.write("typo2.toml", &config));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "stderr:\n{stderr}");
    assert!(
        stderr.contains("auth_usr"),
        "stderr must name the key:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("line {line}")),
        "stderr must name line {line}:\n{stderr}"
    );
}

/// A config with four separate value errors, each with its own key and line.
fn many_bad_values(files: &Files) -> String {
    let good = files.good_config();
    let mut config = good
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"nonsense\"]")
        .replace("id = \"acme\"", "id = \"Acme\"")
        .replace("tls = \"disable\"", "tls = \"sometimes\"");
    // Two tenants with the same (valid) id.
    let second = format!(
        "\n[[tenants]]\nid = \"globex\"\n[tenants.backend]\nhost = \"/tmp\"\nauth_user = \"a\"\nauth_password_file = {pw:?}\n\
         \n[[tenants]]\nid = \"globex\"\n[tenants.backend]\nhost = \"/tmp\"\nauth_user = \"a\"\nauth_password_file = {pw:?}\n",
        pw = files.password_file.display().to_string()
    );
    config.push_str(&second);
    config
}

fn assert_many_bad_values_reported(config: &str, stderr: &str) {
    assert_reported(
        stderr,
        line_of(config, "listen"),
        "proxy.listen[0]",
        "nonsense",
    );
    assert_reported(
        stderr,
        line_of(config, "id = \"Acme\""),
        "tenants[0].id",
        "Acme",
    );
    assert_reported(
        stderr,
        line_of(config, "tls = \"sometimes\""),
        "tenants[0].backend.tls",
        "sometimes",
    );
    assert_reported(
        stderr,
        nth_line_of(config, "id = \"globex\"", 1),
        "tenants[2].id",
        "twice",
    );
    assert!(
        stderr.contains("4 problem"),
        "all four problems in one run:\n{stderr}"
    );
}

#[test]
fn bad_values_are_all_reported_in_one_run() {
    let files = Files::new();
    let config = many_bad_values(&files);
    let out = check(&files.write("bad.toml", &config));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "stderr:\n{stderr}");
    assert_many_bad_values_reported(&config, &stderr);
}

#[test]
fn listen_of_the_wrong_type_is_named_with_its_line() {
    let files = Files::new();
    let config = files
        .good_config()
        .replace("listen = [\"127.0.0.1:0\"]", "listen = \"nonsense\"");
    let line = line_of(&config, "listen");
    // The file name must not contain the key, or the check below proves nothing.
    let out = check(&files.write("wrong-type.toml", &config));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "stderr:\n{stderr}");
    let problem = stderr
        .lines()
        .find(|l| l.contains(&format!("line {line}:")))
        .unwrap_or_else(|| panic!("stderr must name line {line}:\n{stderr}"));
    assert!(
        problem.contains("proxy.listen"),
        "the problem must name the key `proxy.listen`: {problem:?}"
    );
}

#[test]
fn serve_with_a_bad_config_exits_quickly_with_the_same_message() {
    let files = Files::new();
    let config = many_bad_values(&files);
    let path = files.write("bad.toml", &config);
    let checked = text(&check(&path).stderr);

    let began = Instant::now();
    let mut child = sluice()
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sluice serve");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for sluice") {
            break status;
        }
        if began.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice serve with a bad config still runs after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("sluice output");
    let stderr = text(&out.stderr);
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(
        !text(&out.stdout).contains("listening"),
        "a bad config must not start listening"
    );
    assert_many_bad_values_reported(&config, &stderr);
    // The problems are the very lines `config check` prints.
    for line in checked
        .lines()
        .filter(|l| l.trim_start().starts_with("line "))
    {
        assert!(
            stderr.contains(line.trim()),
            "serve lacks {line:?}; stderr:\n{stderr}"
        );
    }
}

#[test]
fn every_kind_of_problem_is_reported_in_one_run() {
    let files = Files::new();
    let config = files
        .good_config()
        // A type error, an unknown key, a value out of range and an unreadable file.
        .replace("listen = [\"127.0.0.1:0\"]", "listen = \"127.0.0.1:0\"")
        .replace(
            "login_timeout_ms = 5000",
            "login_timeout_ms = 5000\nshutdown_grase_s = 1",
        )
        .replace("size = 5", "size = \"five\"")
        .replace("id = \"acme\"", "id = \"Acme\"")
        .replace(
            &files.password_file.display().to_string(),
            "/nonexistent/sluice-acme.pw",
        );
    let out = check(&files.write("everything.toml", &config));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "stderr:\n{stderr}");
    assert_reported(
        &stderr,
        line_of(&config, "listen"),
        "proxy.listen",
        "invalid type",
    );
    assert_reported(
        &stderr,
        line_of(&config, "shutdown_grase_s"),
        "proxy.shutdown_grase_s",
        "unknown field",
    );
    assert_reported(
        &stderr,
        line_of(&config, "size = \"five\""),
        "defaults.pool.size",
        "five",
    );
    assert_reported(
        &stderr,
        line_of(&config, "id = \"Acme\""),
        "tenants[0].id",
        "Acme",
    );
    assert_reported(
        &stderr,
        line_of(&config, "auth_password_file"),
        "tenants[0].backend.auth_password_file",
        "cannot read /nonexistent/sluice-acme.pw",
    );
    assert!(
        stderr.contains("5 problem"),
        "all five problems in one run, none twice:\n{stderr}"
    );
}

#[test]
fn a_missing_key_is_named_with_its_table_and_line() {
    let files = Files::new();
    let config = files
        .good_config()
        .replace("auth_user = \"sluice_auth\"\n", "")
        .replace("require_tls = true", "require_tls = \"yes\"");
    let out = check(&files.write("missing.toml", &config));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "stderr:\n{stderr}");
    assert_reported(
        &stderr,
        line_of(&config, "require_tls"),
        "proxy.require_tls",
        "invalid type",
    );
    assert_reported(
        &stderr,
        line_of(&config, "[tenants.backend]"),
        "tenants[0].backend",
        "missing field `auth_user`",
    );
}

/// The example config names files under /etc/sluice: on a machine without them, the
/// check names each missing file with its key and line and nothing else; with them in
/// place, it passes.
#[test]
fn the_example_config_checks_ok_once_its_files_exist() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/sluice.example.toml");
    let original = std::fs::read_to_string(example).unwrap();
    let out = check(Path::new(example));
    let stderr = text(&out.stderr);
    if !out.status.success() {
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("line "))
            .collect();
        assert!(!problems.is_empty(), "stderr:\n{stderr}");
        for problem in problems {
            assert!(
                problem.contains("cannot read /etc/sluice/"),
                "on a fresh machine only the example's files are missing: {problem:?}"
            );
        }
    }

    let files = Files::new();
    let etc = files.dir.path().join("etc");
    for dir in ["tls", "secrets"] {
        std::fs::create_dir_all(etc.join(dir)).unwrap();
    }
    std::fs::copy(&files.pki.proxy_cert, etc.join("tls/wildcard.crt")).unwrap();
    std::fs::copy(&files.pki.proxy_key, etc.join("tls/wildcard.key")).unwrap();
    std::fs::copy(&files.pki.ca_cert, etc.join("tls/backend-ca.crt")).unwrap();
    for tenant in ["acme", "globex"] {
        std::fs::write(etc.join(format!("secrets/{tenant}-auth")), "secret\n").unwrap();
    }
    let config = original.replace("/etc/sluice/", &format!("{}/", etc.display()));
    let out = check(&files.write("example.toml", &config));
    assert!(
        out.status.success(),
        "the example with its files in place:\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("OK (2 tenant(s))"));
}
