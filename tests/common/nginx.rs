//! An nginx of the test's own, on free ports, with a config written into a temp folder.

use super::{free_port, port_open, require_tool, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The ports handed to the config, in the order asked for.
    pub ports: Vec<u16>,
}

impl Nginx {
    /// Starts nginx on `servers` (the `server { ... }` blocks of an `http` block); `{port0}`,
    /// `{port1}`... in them become free ports, and `{dir}` the temp folder.
    pub fn start(port_count: usize, servers: &str) -> Nginx {
        let nginx = nginx_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..port_count).map(|_| free_port()).collect();
        let mut servers = servers.replace("{dir}", &dir.path().display().to_string());
        for (i, port) in ports.iter().enumerate() {
            servers = servers.replace(&format!("{{port{i}}}"), &port.to_string());
        }
        let d = dir.path().display();
        let conf = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  default_type application/json;
{servers}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let started = Nginx { child, dir, ports };
        for port in &started.ports {
            let addr = format!("127.0.0.1:{port}").parse().expect("addr");
            wait_for(
                &format!("nginx on {port}: {}", started.errors()),
                Duration::from_secs(10),
                || port_open(addr).then_some(()),
            );
        }
        started
    }

    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    require_tool("nginx", "install it with `apt-get install -y nginx`")
}
