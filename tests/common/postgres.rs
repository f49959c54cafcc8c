//! PostgreSQL for tests: a fresh database on the machine's server (127.0.0.1:5432, trust
//! auth) for tests that only use one, and a server of the test's own (initdb in a temp dir,
//! run as the `postgres` user on a free port) for tests that kill and restart it.

use super::{free_port, port_open, require_tool, wait_for};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = "/usr/lib/postgresql/15/bin";

fn psql(port: u16, database: &str, sql: &str) -> Result<String, String> {
    require_tool(
        "psql",
        "install it with `apt-get install -y postgresql-client`; .ci/run does this",
    );
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A database of the test's own, dropped at the end.
pub struct Database {
    pub port: u16,
    pub name: String,
}

impl Database {
    /// A new empty database on the machine's PostgreSQL at 127.0.0.1:5432.
    pub fn create() -> Database {
        Database::create_on(5432)
    }

    pub fn create_on(port: u16) -> Database {
        let name = format!("tollgate_test_{:016x}", rand_u64());
        psql(port, "postgres", &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "cannot create a database on 127.0.0.1:{port} (PostgreSQL with trust auth for user postgres is needed): {e}"
            )
        });
        Database { port, name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// Runs SQL in this database and returns its unaligned output.
    pub fn query(&self, sql: &str) -> String {
        psql(self.port, &self.name, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            self.port,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A PostgreSQL server of the test's own, which it may kill and start again.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn as_postgres(program: &str) -> Command {
    // initdb and postgres refuse to run as root.
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    c
}

impl Server {
    pub fn start() -> Server {
        assert!(
            std::path::Path::new(&format!("{BIN}/initdb")).exists(),
            "PostgreSQL 15 server binaries are needed at {BIN}: `apt-get install -y postgresql-15`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        let init = as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(init.success(), "initdb failed");
        let mut server = Server {
            child: None,
            port: free_port(),
            data,
            _dir: dir,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.data.parent().unwrap_or(&self.data))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            &format!("postgres on {port}"),
            Duration::from_secs(20),
            || psql(port, "postgres", "SELECT 1").ok().map(|_| ()),
        );
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // runuser passes signals on; kill the server itself by its pid file too.
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if let Some(pid) = pid {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        wait_for("postgres to stop", Duration::from_secs(10), || {
            (!port_open(addr)).then_some(())
        });
        let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
    }

    pub fn restart(&mut self) {
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
