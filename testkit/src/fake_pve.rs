//! A fake Proxmox VE API for the `proxmox` driver's tests: exactly the endpoints the
//! driver calls, with the shapes and quirks of the real one (docs/drivers.md):
//! HTTPS with its own certificate, `PVEAPIToken` auth (401 with an empty body after a
//! delay for a bad token), the `{"data": …}` envelope, 500s whose text is in the reason
//! phrase and (unless `legacy_errors`) the body's `message`, 400s with `errors`, UPIDs
//! and task polling, `nextid` as a string, `vmid` as a string in `status/current`,
//! `interfaces` null while stopped, the `create` lock held (and tags unwritten) while a
//! creation runs, and a destroyed container's config removed last.
//!
//! Behind it every container is a real PostgreSQL cluster (localpg) listening on its own
//! loopback address, `127.X.Y.Z:5432`, with TLS. Creating a container copies the cluster
//! from localpg's template (the "ostemplate"); its first start plays the template's
//! first-boot unit: the SCRAM verifier in the `sluice-admin-verifier:` line of
//! `/root/.ssh/authorized_keys` becomes the `postgres` role's password (through
//! single-user mode) and the line is removed.
//!
//! Tests can script faults: the next task of a type fails with a given exit status,
//! a request fails with a given status and message, overlapping creations on one node
//! fail with a storage lock timeout. Dropping the [`FakePve`] stops the server and every
//! container's postmaster.

mod api;
mod call;
mod guests;
mod http;
mod options;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use localpg::tls::CertificateAuthority;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub use guests::{FirewallView, GuestView};
use guests::{Injection, Shared};
pub use options::FakePveOptions;

/// A running fake; see the module documentation.
pub struct FakePve {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub addr: SocketAddr,
    /// SHA-256 of the server certificate, `AB:CD:…` as Proxmox shows it.
    pub fingerprint: String,
    /// The CA that issued the API's certificate (and the containers' PostgreSQL ones).
    pub ca_cert: PathBuf,
    pub token_id: String,
    pub token_secret: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    // Last: removed after the containers are stopped.
    _dir: tempfile::TempDir,
}

impl FakePve {
    /// The `[provisioner]` and `[provisioner.proxmox]` config sections that point a Sluice
    /// at this fake (driver `proxmox`), with the token secret written to `secret_file`.
    pub fn provisioner_section(&self, secret_file: &Path) -> String {
        std::fs::write(secret_file, format!("{}\n", self.token_secret))
            .expect("writing the token secret");
        format!(
            "[provisioner]\ndriver = \"proxmox\"\n[provisioner.proxmox]\nurl = \"{}\"\n\
             token_id = \"{}\"\ntoken_secret_file = {:?}\ntls_fingerprint = \"{}\"\n\
             ostemplate = \"local:vztmpl/sluice-pg15.tar.zst\"\nstorage = \"local-lvm\"\n\
             sluice_hosts = [\"127.0.0.1\"]\n",
            self.url,
            self.token_id,
            secret_file.display().to_string(),
            self.fingerprint,
        )
    }

    /// Starts the fake on `127.0.0.1:0` (inside a tokio runtime).
    pub async fn start(options: FakePveOptions) -> anyhow::Result<FakePve> {
        let dir = tempfile::Builder::new().prefix("fake-pve-").tempdir()?;
        let ca = CertificateAuthority::generate("Fake Proxmox VE CA")?;
        let ca_cert = dir.path().join("pve-root-ca.pem");
        std::fs::write(&ca_cert, ca.cert_pem())?;
        let leaf = ca.issue(&["127.0.0.1", "localhost"])?;
        let cert = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())?;
        let fingerprint = Sha256::digest(cert.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let token_id = "sluice@pve!provisioner".to_owned();
        let token_secret = format!("{:032x}", rand::random::<u128>());
        let shared = Arc::new(Shared {
            state: Mutex::new(guests::State::new(&options.nodes)),
            options,
            token_id: token_id.clone(),
            token_secret: token_secret.clone(),
            ca,
            fingerprint: fingerprint.clone(),
            dir: dir.path().join("guests"),
        });
        std::fs::create_dir_all(&shared.dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(http::serve(listener, cert, key, shared.clone()));
        Ok(FakePve {
            url: format!("https://{addr}"),
            addr,
            fingerprint,
            ca_cert,
            token_id,
            token_secret,
            shared,
            server,
            _dir: dir,
        })
    }

    /// The containers as the fake holds them.
    pub fn guests(&self) -> Vec<GuestView> {
        self.shared.state().views()
    }

    /// One container by VMID.
    pub fn guest(&self, vmid: u64) -> Option<GuestView> {
        self.guests().into_iter().find(|g| g.vmid == vmid)
    }

    /// The next task of `kind` (`vzcreate`, `vzstart`, `vzdestroy`, `resize`, …) ends
    /// with `exitstatus` instead of doing its work (a failed creation removes its
    /// container, as Proxmox does).
    pub fn fail_next_task(&self, kind: &str, exitstatus: &str) {
        self.shared
            .state()
            .task_failures
            .push((kind.to_owned(), exitstatus.to_owned()));
    }

    /// The next `times` requests with `method` whose path ends with `path_suffix` get
    /// `status` with `message` (in the fake's error format).
    pub fn fail_requests(
        &self,
        method: &str,
        path_suffix: &str,
        status: u16,
        message: &str,
        times: u32,
    ) {
        self.shared.state().injections.push(Injection {
            method: method.to_owned(),
            path_suffix: path_suffix.to_owned(),
            status,
            message: message.to_owned(),
            times,
        });
    }

    /// Counts of requests by `METHOD path-template` (VMIDs and UPIDs replaced by `{}`).
    pub fn request_counts(&self) -> BTreeMap<String, usize> {
        self.shared.state().requests.clone()
    }

    /// VMID and parameters of every accepted destroy call.
    pub fn destroyed(&self) -> Vec<(u64, BTreeMap<String, String>)> {
        self.shared.state().destroyed.clone()
    }

    /// Where the containers' file systems are.
    pub fn guests_dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        self.server.abort();
        let clusters = self.shared.state().take_clusters();
        for cluster in clusters {
            let mut cluster = cluster.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(mut c) = cluster.take() {
                let _ = c.stop(localpg::StopMode::Immediate);
            }
        }
    }
}
