//! The admin CLI end to end: the built `sluice` binary's `tenants`, `roles` and
//! `audit` commands against a real `sluice serve` (embedded control store, tenants on
//! real Postgres, new ones provisioned by the `local` driver), checking what they
//! print, what they change, and how they fail.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::http::{get, request};
use testkit::{
    pg_connect, pg_connect_from, psql, PgTarget, Pki, SluiceConfig, SluiceProcess, TenantEntry,
    TwoTenants,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// One run of the CLI.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout, after checking the run succeeded.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "stderr: {}\nstdout: {}",
            self.stderr,
            self.stdout
        );
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// Stderr, after checking the run failed with exit code 1.
    fn failed(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        &self.stderr
    }
}

/// How the tests run the CLI: against one API with one key, given in SLUICE_API /
/// SLUICE_TOKEN as a user would set them.
struct Cli {
    api: String,
    token: String,
}

impl Cli {
    fn new(sluice: &SluiceProcess, token: &str) -> Cli {
        Cli {
            api: format!("http://{}", sluice.admin_addr),
            token: token.to_owned(),
        }
    }

    /// `sluice WORDS` (split at whitespace).
    fn run(&self, words: &str) -> Run {
        self.args(&words.split_whitespace().collect::<Vec<_>>(), "")
    }

    /// `sluice ARGS` with `stdin` as standard input.
    fn args(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = Command::new(BIN)
            .args(args)
            .env("SLUICE_API", &self.api)
            .env("SLUICE_TOKEN", &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running sluice");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

/// A new API key with `role`, made with the admin key.
fn create_key(sluice: &SluiceProcess, role: &str) -> String {
    let body = json!({"role": role}).to_string();
    let r = request(
        sluice.admin_addr,
        "POST",
        "/v1/api-keys",
        Some(&sluice.admin_key),
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["key"].as_str().unwrap().to_owned()
}

/// The first line of `table` whose first word is `word`.
fn row<'a>(table: &'a str, word: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(word))
        .unwrap_or_else(|| panic!("no line for {word} in\n{table}"))
}

/// The value of `key` in key/value output (`status  active`).
fn value<'a>(text: &'a str, key: &str) -> &'a str {
    row(text, key).split_whitespace().nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_read_changed_suspended_and_audited_through_the_cli() {
    let env = TwoTenants::start(BIN.as_ref(), |_| {}).unwrap();
    let key = env.sluice.admin_key.clone();
    let cli = Cli::new(&env.sluice, &key);

    // list: a table and the API's JSON.
    let table = cli.run("tenants list").ok().to_owned();
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "STATUS", "PLAN", "ADDRESS", "POOL"],
        "{table}"
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[1].starts_with("acme ") && lines[2].starts_with("globex "));
    let acme = row(&table, "acme");
    assert!(
        acme.contains(" active ") && acme.contains("session/"),
        "{table}"
    );
    let listed = cli.run("tenants list --output json").json();
    let ids: Vec<&str> = listed["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "globex"]);
    assert_eq!(listed["next_cursor"], Value::Null);

    // get: key/value lines, and JSON exactly as the API answers it.
    let shown = cli.run("tenants get globex").ok().to_owned();
    assert_eq!(value(&shown, "id"), "globex", "{shown}");
    assert_eq!(value(&shown, "status"), "active", "{shown}");
    assert_eq!(value(&shown, "backend.tls"), "verify-full", "{shown}");
    assert!(!value(&shown, "pool.size").is_empty(), "{shown}");
    assert_eq!(value(&shown, "limits.query_rate"), "0", "{shown}");
    let from_api = get(env.sluice.admin_addr, "/v1/tenants/globex", Some(&key)).json();
    assert_eq!(cli.run("tenants get globex --output json").json(), from_api);
    // The flags may come before the subcommand, and --api wins over SLUICE_API.
    let elsewhere = Cli {
        api: "http://127.0.0.1:1".into(),
        token: key.clone(),
    };
    let flags_first = format!("tenants --output json --api {} get globex", cli.api);
    assert_eq!(elsewhere.run(&flags_first).json(), from_api);

    // update --set: the change shows in get and list.
    let updated = cli
        .run(
            "tenants update acme --set pool.size=7 --set limits.query_rate=100 \
             --set limits.allow_cidrs=127.0.0.0/8,::1/128 --output json",
        )
        .json();
    assert_eq!(updated["pool"]["size"], 7, "{updated}");
    let now = cli.run("tenants get acme --output json").json();
    assert_eq!(now["pool"]["size"], 7, "{now}");
    assert_eq!(now["limits"]["query_rate"], 100, "{now}");
    let cidrs = json!(["127.0.0.0/8", "::1/128"]);
    assert_eq!(now["limits"]["allow_cidrs"], cidrs, "{now}");
    let table = cli.run("tenants list").ok().to_owned();
    assert!(row(&table, "acme").ends_with("/7"), "{table}");
    // A key the server does not know: its 422, and nothing changes.
    let bad = cli.run("tenants update acme --set pool.sise=3");
    let stderr = bad.failed();
    assert!(
        stderr.starts_with("error: 422 ") && stderr.contains("sise"),
        "{stderr}"
    );
    let nothing = cli.run("tenants update acme");
    assert!(
        nothing.failed().contains("nothing to change"),
        "{}",
        nothing.stderr
    );
    let malformed = cli.run("tenants update acme --set size=3");
    assert_eq!(malformed.code, Some(2), "{}", malformed.stderr);
    assert_eq!(cli.run("tenants get acme --output json").json(), now);

    // suspend --terminate ends the running session; resume lets clients in again.
    let target = env.target("acme");
    let (running, running_conn) = pg_connect_from(&target, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    running.simple_query("select 1").await.unwrap();
    let words = [
        "tenants",
        "suspend",
        "acme",
        "--terminate",
        "--reason",
        "cli test",
    ];
    let suspended = cli.args(&words, "").ok().to_owned();
    assert_eq!(value(&suspended, "status"), "suspended", "{suspended}");
    assert!(row(&suspended, "suspended_reason").ends_with(" cli test"));
    let ended = tokio::time::timeout(Duration::from_secs(10), running_conn)
        .await
        .expect("the running session ends")
        .unwrap()
        .expect_err("ended by Sluice");
    let code = ended.as_db_error().map(|e| e.code().code());
    assert_eq!(code, Some("57P01"), "{ended}");
    let refused = psql(&target, "select 1");
    assert!(!refused.success, "suspended");
    assert!(
        refused.stderr.contains("is suspended"),
        "{}",
        refused.stderr
    );
    let resumed = cli.run("tenants resume acme --output json").json();
    assert_eq!(resumed["status"], "active", "{resumed}");
    let again = pg_connect(&target).await.expect("resumed");
    again.simple_query("select 1").await.unwrap();

    // audit list shows those changes, newest first, with the acting key.
    let actor = &key[3..11];
    let events = cli.run("audit list --tenant acme --output json").json();
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    let expected = ["tenant.resume", "tenant.suspend", "tenant.update"];
    assert_eq!(actions, expected, "{events}");
    assert_eq!(events["events"][0]["actor"], actor);
    assert_eq!(events["next_cursor"], Value::Null);
    let table = cli.run("audit list --tenant acme").ok().to_owned();
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "AT", "ACTOR", "ACTION", "TARGET"], "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    let newest: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(newest[2..], [actor, "tenant.resume", "acme"], "{table}");
    assert!(
        newest[1].ends_with('Z') && !newest[1].contains('.'),
        "{table}"
    );
    let none = cli.run("audit list --tenant globex");
    assert!(none.ok().contains("(no events)"), "{}", none.stdout);
    let one = cli.run("audit list --tenant acme --limit 1");
    assert_eq!(one.ok().lines().count(), 2, "{}", one.stdout);
    assert!(one.stderr.contains("more events"), "{}", one.stderr);
    let one = cli
        .run("audit list --action tenant.suspend --limit 1 --output json")
        .json();
    assert_eq!(one["events"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["events"][0]["details"]["terminate"], true, "{one}");

    // verify: the chain holds.
    let verified = cli.run("audit verify").ok().to_owned();
    assert!(verified.starts_with("audit log OK: "), "{verified}");
    let verdict = cli.run("audit verify --output json").json();
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert!(verdict["events"].as_u64().unwrap() >= 3, "{verdict}");
}

/// A directory with certificates and one tenant, `acme`, whose backend is never
/// dialled: enough for the API's errors and for tenants the server provisions.
fn admin_only_sluice() -> (tempfile::TempDir, Pki, SluiceProcess) {
    let dir = tempfile::Builder::new()
        .prefix("sluice-cli-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let password_file = dir.path().join("acme-auth");
    std::fs::write(&password_file, "not-used\n").unwrap();
    let mut config = SluiceConfig::new(&pki);
    config.tenants.push(TenantEntry {
        id: "acme".into(),
        host: "127.0.0.1".into(),
        port: 1,
        tls: "disable",
        tls_ca: None,
        auth_password_file: password_file,
        auth_query: None,
        pool: Vec::new(),
        limits: Vec::new(),
        plan: None,
    });
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config).unwrap();
    // Dropped in reverse: Sluice stops before its files go.
    (dir, pki, sluice)
}

#[test]
fn errors_are_one_clear_line_and_exit_1() {
    let (_dir, _pki, sluice) = admin_only_sluice();
    let admin = Cli::new(&sluice, &sluice.admin_key);

    // A viewer reads, and is refused changes with the API's 403.
    let viewer = Cli::new(&sluice, &create_key(&sluice, "viewer"));
    assert!(viewer.run("tenants list").ok().contains("acme"));
    assert!(viewer.run("audit verify").ok().starts_with("audit log OK"));
    for words in [
        "tenants suspend acme",
        "tenants resume acme",
        "tenants update acme --set pool.size=2",
    ] {
        let run = viewer.run(words);
        let stderr = run.failed();
        assert!(
            stderr.starts_with("error: 403 forbidden: "),
            "{words}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(run.stdout.is_empty(), "{words}: {}", run.stdout);
    }
    let status = admin.run("tenants get acme --output json").json();
    assert_eq!(status["status"], "active", "the viewer changed nothing");

    // A wrong key, an unknown tenant.
    let forged = Cli::new(&sluice, "sk_00000000_00");
    let run = forged.run("tenants list");
    assert!(
        run.failed().starts_with("error: 401 unauthorized: "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--token or SLUICE_TOKEN"),
        "a 401 says where the key goes: {}",
        run.stderr
    );
    let run = admin.run("tenants get nope");
    assert!(
        run.failed().starts_with("error: 404 not_found: "),
        "{}",
        run.stderr
    );

    // Wrong URLs: nothing listening, not http, the wrong path prefix.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_api = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let elsewhere = |api: String| Cli {
        api,
        token: sluice.admin_key.clone(),
    };
    let run = elsewhere(dead_api.clone()).run("tenants list");
    let stderr = run.failed();
    let expected = format!("error: {dead_api}/v1/tenants: cannot connect to ");
    assert!(stderr.starts_with(&expected), "{stderr}");
    let run = elsewhere("ftp://127.0.0.1".into()).run("audit verify");
    assert!(
        run.failed().contains("must start with http://"),
        "{}",
        run.stderr
    );
    let run = elsewhere(format!("{}/nope", admin.api)).run("tenants list");
    assert!(run.failed().starts_with("error: 404 "), "{}", run.stderr);
    // The proxy's port is not the API's: the error says which to use.
    let run = elsewhere(format!("http://{}", sluice.addr)).run("tenants list");
    assert!(
        run.failed().contains("is --api the admin listener"),
        "{}",
        run.stderr
    );
}

/// Create (a repeat with the same idempotency key is the same request), wait for the
/// job, read the tenant back, delete it and wait again.
#[test]
fn tenants_are_created_and_deleted_with_wait() {
    let (_dir, _pki, sluice) = admin_only_sluice();
    let cli = Cli::new(&sluice, &sluice.admin_key);

    let create = "tenants create fresh --idempotency-key cli-test-1 --output json";
    let first = cli.run(create).json();
    assert_eq!(first["tenant"]["id"], "fresh", "{first}");
    assert_eq!(first["job"]["kind"], "create", "{first}");
    assert!(first["job"]["id"].is_number(), "{first}");
    let again = cli.run(create).json();
    assert_eq!(again["job"]["id"], first["job"]["id"], "{again}");

    let waited = cli.run("tenants create fresh2 --set pool.size=4 --wait 120");
    let out = waited.ok();
    assert_eq!(value(out, "status"), "active", "{out}");
    assert_eq!(value(out, "pool.size"), "4", "{out}");
    assert_eq!(value(out, "job.state"), "succeeded", "{out}");
    assert!(
        waited.stderr.contains("(create fresh2): succeeded"),
        "{}",
        waited.stderr
    );
    let listed = cli.run("tenants list").ok().to_owned();
    assert!(row(&listed, "fresh2").contains(" active "), "{listed}");
    let created = cli.run("audit list --tenant fresh2 --output json").json();
    let actions = created["events"].as_array().unwrap();
    assert!(
        actions.iter().any(|e| e["action"] == "tenant.create"),
        "{created}"
    );

    let deleted = cli
        .run("tenants delete fresh2 --wait 120 --output json")
        .json();
    assert_eq!(deleted["job"]["kind"], "delete", "{deleted}");
    assert_eq!(deleted["job"]["state"], "succeeded", "{deleted}");
    let gone = cli.run("tenants get fresh2");
    assert!(gone.failed().starts_with("error: 404 "), "{}", gone.stderr);
    let run = cli.run("tenants delete fresh2");
    assert!(run.failed().starts_with("error: 404 "), "{}", run.stderr);
    cli.run("tenants delete fresh --wait").ok();
    assert!(cli.run("audit verify").ok().starts_with("audit log OK"));
}

/// A create that fails (a static backend nobody listens on): a short `--wait` exits 1
/// with the job still going; the same command again (same idempotency key) follows the
/// same job to its failure and exits 1 with its error. The backend's password never
/// reaches the audit log.
#[test]
fn a_failed_or_unfinished_job_makes_wait_exit_1() {
    let (dir, _pki, sluice) = admin_only_sluice();
    let cli = Cli::new(&sluice, &sluice.admin_key);
    let password = dir.path().join("backend-admin");
    std::fs::write(&password, "secret-admin-pw\n").unwrap();
    let create = |wait: &str| {
        cli.run(&format!(
            "tenants create broken --static-host 127.0.0.1 --port 1 --tls disable \
             --admin-user postgres --admin-password-file {} --idempotency-key broken-1 \
             --wait {wait}",
            password.display()
        ))
    };
    let early = create("1");
    let stderr = early.failed();
    assert!(stderr.contains(" after 1s"), "{stderr}");
    let job = value(&early.stdout, "job.id").to_owned();
    assert!(
        stderr.contains(&format!("\nerror: job {job} is still ")),
        "{stderr}"
    );

    let run = create("300");
    let stderr = run.failed();
    let failed = format!("error: job {job} failed: ");
    assert!(stderr.contains(&failed), "the same job: {stderr}");
    assert_eq!(value(&run.stdout, "job.state"), "failed", "{}", run.stdout);
    assert_eq!(value(&run.stdout, "status"), "failed", "{}", run.stdout);
    let events = cli.run("audit list --all --output json").json();
    assert!(!events.to_string().contains("secret-admin-pw"), "{events}");
    let half = cli.run("tenants create half --static-host db");
    assert_eq!(half.code, Some(2), "{}", half.stderr);
}

/// Roles on a created tenant: the password is shown once, works through the proxy,
/// stops working when rotated, and the role goes away on delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_created_rotated_listed_and_deleted() {
    let (_dir, pki, sluice) = admin_only_sluice();
    let cli = Cli::new(&sluice, &sluice.admin_key);
    cli.run("tenants create shop --wait 120").ok();

    let created = cli.run("roles create --tenant shop reporting");
    let out = created.ok();
    assert!(
        created.stderr.contains("shown only this once"),
        "{}",
        created.stderr
    );
    assert_eq!(value(out, "role"), "reporting", "{out}");
    let password = value(out, "password").to_owned();
    let mut target = PgTarget::tenant(sluice.addr, "shop", &password, &pki.ca_cert);
    target.user = "reporting".into();
    let client = pg_connect(&target).await.expect("the new role logs in");
    client.simple_query("select 1").await.unwrap();

    let listed = cli.run("roles list --tenant shop").ok().to_owned();
    assert!(
        row(&listed, "reporting").ends_with(" -"),
        "not rotated: {listed}"
    );
    let rotated = cli
        .run("roles rotate --tenant shop reporting --output json")
        .json();
    let new_password = rotated["password"].as_str().unwrap().to_owned();
    assert_ne!(new_password, password);
    assert!(
        pg_connect(&target).await.is_err(),
        "the old password is refused"
    );
    target.password = new_password.clone();
    pg_connect(&target).await.expect("the new password works");
    let listed = cli.run("roles list --tenant shop --output json").json();
    assert!(listed["roles"][0]["rotated_at"].is_string(), "{listed}");

    // A chosen password comes from stdin and is not echoed back.
    let words = [
        "roles",
        "rotate",
        "--tenant",
        "shop",
        "reporting",
        "--password-stdin",
    ];
    let chosen = cli.args(&words, "Chosen-pw-123\n");
    assert!(!chosen.ok().contains("Chosen-pw-123"), "{}", chosen.stdout);
    target.password = "Chosen-pw-123".into();
    pg_connect(&target)
        .await
        .expect("the chosen password works");
    let words = [
        "roles",
        "create",
        "--tenant",
        "shop",
        "batch",
        "--password-stdin",
    ];
    cli.args(&words, "Batch-pw-456").ok();

    let deleted = cli.run("roles delete --tenant shop reporting");
    assert!(deleted.ok().contains("deleted"), "{}", deleted.stdout);
    assert!(pg_connect(&target).await.is_err(), "the role is gone");
    let listed = cli.run("roles list --tenant shop").ok().to_owned();
    assert!(
        !listed.contains("reporting") && listed.contains("batch"),
        "{listed}"
    );
    let run = cli.run("roles delete --tenant shop reporting");
    assert!(run.failed().starts_with("error: 404 "), "{}", run.stderr);
    let events = cli
        .run("audit list --tenant shop --output json")
        .json()
        .to_string();
    for secret in [
        password.as_str(),
        &new_password,
        "Chosen-pw-123",
        "Batch-pw-456",
    ] {
        assert!(!events.contains(secret), "{events}");
    }
}

/// `sluice keys`: a key made with the CLI works with its role, is listed, and stops
/// working once revoked; only an admin key may manage keys.
#[test]
fn keys_are_created_listed_and_revoked() {
    let (_dir, _pki, sluice) = admin_only_sluice();
    let admin = Cli::new(&sluice, &sluice.admin_key);

    let created = admin.run("keys create --role viewer --name grafana --output json");
    let created = created.json();
    let key = created["key"]
        .as_str()
        .expect("the key is in the answer")
        .to_owned();
    let id = created["id"].as_str().expect("an id").to_owned();
    assert!(key.starts_with(&format!("sk_{id}_")), "{created}");
    assert_eq!(created["role"], "viewer", "{created}");

    // The table form shows the key once, with a warning on stderr.
    let run = admin.run("keys create --role operator");
    assert!(run.ok().contains("sk_"), "{}", run.stdout);
    assert!(
        run.stderr.contains("shown only this once"),
        "{}",
        run.stderr
    );

    let viewer = Cli::new(&sluice, &key);
    viewer.run("tenants list").ok();
    let run = viewer.run("keys list");
    assert!(
        run.failed().starts_with("error: 403 forbidden: "),
        "a viewer key cannot manage keys: {}",
        run.stderr
    );

    let listed = admin.run("keys list");
    let table = listed.ok();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&id) && l.contains("grafana")),
        "{table}"
    );

    let run = admin.run(&format!("keys revoke {id}"));
    assert!(run.ok().contains("revoked"), "{}", run.stdout);
    let run = viewer.run("tenants list");
    assert!(
        run.failed().starts_with("error: 401 unauthorized: "),
        "a revoked key stops working: {}",
        run.stderr
    );
    let run = admin.run(&format!("keys revoke {id}"));
    assert!(run.failed().starts_with("error: 404 "), "{}", run.stderr);
}
