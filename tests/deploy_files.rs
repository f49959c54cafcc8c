//! docker-compose.yml, the Dockerfile and the docker config cannot be run here (no Docker
//! engine), so they are read against each other and against the binaries instead.

use serde_yaml::Value;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_runs_redis_tollgate_and_both_stub_services() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    for name in ["redis", "tollgate", "service-a", "service-b"] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml lacks the {name} service"
        );
    }
}

#[test]
fn the_docker_config_is_valid_and_points_at_the_compose_services() {
    let compose = compose();
    let tollgate = &compose["services"]["tollgate"];
    let mount = strings(&tollgate["volumes"])
        .into_iter()
        .find(|v| v.ends_with(":/etc/tollgate/config.yaml:ro"))
        .expect("tollgate mounts its config");
    let host_path = mount.split(':').next().unwrap();
    let config_path = root().join(host_path);
    let text = std::fs::read_to_string(&config_path).unwrap();
    let loaded = tollgate::config::parse(&text, host_path).unwrap_or_else(|e| panic!("{e}"));
    let config = loaded.config;

    // The command runs the mounted file.
    assert_eq!(
        strings(&tollgate["command"]),
        ["run", "-c", "/etc/tollgate/config.yaml"]
    );

    // Every backend is a compose service listening on that port.
    for (name, upstream) in &config.upstreams {
        for backend in &upstream.backends {
            let (host, port) = tollgate::config::split_host_port(&backend.address).unwrap();
            let service = &compose["services"][host];
            assert!(
                service.is_mapping(),
                "upstream {name}: no compose service `{host}`"
            );
            let command = strings(&service["command"]);
            let listen = command
                .windows(2)
                .find(|w| w[0] == "--listen")
                .map(|w| w[1].clone())
                .unwrap_or_else(|| panic!("service {host} has no --listen"));
            assert_eq!(listen, format!("0.0.0.0:{port}"), "service {host}");
            assert_eq!(strings(&service["entrypoint"]), ["stub-service"]);
        }
    }

    // Redis is the compose service, and tollgate waits for it.
    let redis_url = config
        .redis
        .as_ref()
        .expect("the docker config uses redis")
        .url
        .clone();
    assert_eq!(redis_url, "redis://redis:6379");
    assert!(
        tollgate["depends_on"]["redis"].is_mapping(),
        "tollgate depends on redis"
    );

    // The published ports are the ones tollgate listens on.
    let ports = strings(&tollgate["ports"]);
    for listen in config.listen.iter().chain([&config.admin.listen]) {
        let port = listen.rsplit(':').next().unwrap();
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{listen} is unreachable from outside the container"
        );
        assert!(
            ports.contains(&format!("{port}:{port}")),
            "port {port} is not published: {ports:?}"
        );
    }
}

#[test]
fn the_dockerfile_ships_the_binaries_and_config_compose_uses() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for needle in [
        "target/release/tollgate /usr/local/bin/tollgate",
        "target/release/stub-service /usr/local/bin/stub-service",
        "COPY deploy/config.docker.yaml /etc/tollgate/config.yaml",
        "cmake",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks `{needle}`");
    }
    assert!(root().join("deploy/config.docker.yaml").is_file());
    assert!(Path::new(env!("CARGO_BIN_EXE_tollgate")).is_file());
}
