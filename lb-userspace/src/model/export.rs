//! The model as configuration text again (`sluice config show`, `GET /v1/config`): the running
//! model, run-time edits included, in the file's own format. Invariant: parsing the text gives
//! back an equal model, so a daemon reloading it changes nothing. Comments and the order of
//! keys in the original file are not kept. Optional settings left out of the file stay out, so
//! their defaults still apply in a later sluice; settings the model fills in as it reads
//! (weights, deregistration delays, hash keys, the data plane's) are written with their values.

use super::Model;

/// The first lines of every export: where it came from.
pub const HEADER: &str = "# The running model of sluice, exported by `sluice config show`.\n\
# Comments and the order of the original file are not kept.\n\n";

#[derive(Debug, thiserror::Error)]
#[error("the running model cannot be written as TOML: {0}")]
pub struct ExportError(#[from] toml::ser::Error);

impl Model {
    /// The model as TOML that [`Model::parse`] reads back into an equal model.
    pub fn to_toml(&self) -> Result<String, ExportError> {
        let body = toml::to_string_pretty(self)?;
        Ok(format!("{HEADER}{body}"))
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use crate::model::{edit::Edit, Listener, Mode, Protocol, Target};

    use super::*;

    /// Every kind of field: L4 and L7 listeners, rules of each action, stickiness, health
    /// checks with sub-second durations, certificates, access logs, data-plane settings.
    const RICH: &str = r#"
        [[listener]]
        name = "tcp"
        address = "192.0.2.10"
        port = 5000
        protocol = "tcp"
        mode = "nat"
        default_target_group = "l4"
        maglev_table_size = 251
        idle_timeout = "90s"

        [[listener]]
        name = "dsr"
        address = "192.0.2.11"
        port = 0
        protocol = "udp"
        mode = "dsr"
        default_target_group = "l4udp"

        [[listener]]
        name = "web"
        address = "192.0.2.12"
        port = 80
        protocol = "http"
        default_target_group = "www"
        idle_timeout = 30
        header_read_timeout = 5
        max_header_bytes = 8192
        max_connections = 100
        access_log = "/var/log/sluice/web.log"

        [[listener.rule]]
        priority = 10
        host = ["api.example.com", "*.api.example.com"]
        path = ["/v1/*"]
        method = ["GET", "POST"]
        source_ip = ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]
        header = [{ name = "x-env", values = ["beta*"] }]
        query = [{ key = "version", value = "2" }, { value = "x" }]
        action = { type = "forward", target_groups = [{ name = "api", weight = 3 }, { name = "www" }] }

        [[listener.rule]]
        priority = 20
        path = ["/old/*"]
        action = { type = "redirect", status = 302, protocol = "https", port = 443, path = "/new/#{path}" }

        [[listener.rule]]
        priority = 30
        path = ["/down"]
        action = { type = "fixed_response", status = 503, content_type = "text/plain", body = "down \"now\"\n" }

        [[listener]]
        name = "secure"
        address = "192.0.2.12"
        port = 443
        protocol = "https"
        default_target_group = "www"
        certificates = [{ cert = "/etc/sluice/a.pem", key = "/etc/sluice/a.key" }, { cert = "/etc/sluice/b.pem", key = "/etc/sluice/b.key" }]

        [[target_group]]
        name = "l4"
        port = 3000
        hash_key = "source_ip"
        deregistration_delay = 10
        health_check = { protocol = "http", port = 8080, path = "/health", interval = "250ms", timeout = "100ms", healthy_threshold = 2, unhealthy_threshold = 3, matcher = "200-299,302" }
        targets = [ { address = "10.0.1.10" }, { address = "10.0.1.11", port = 3001, weight = 2 } ]

        [[target_group]]
        name = "l4udp"
        health_check = { port = 53 }
        targets = [ { address = "10.0.2.10" } ]

        [[target_group]]
        name = "www"
        port = 3000
        stickiness = { type = "lb_cookie", duration = 120 }
        outlier_detection = { consecutive_errors = 0 }
        targets = [ { address = "10.0.1.10" } ]

        [[target_group]]
        name = "api"
        algorithm = "least_outstanding_requests"
        stickiness = { type = "app_cookie", cookie_name = "SESSIONID" }
        targets = [ { address = "fd00::10", port = 8080 } ]

        [[target_group]]
        name = "empty"

        [data_plane]
        nat_port_range = [40000, 49999]
        max_new_flows_per_cpu = 1000
    "#;

    fn round_trip(model: &Model) -> Model {
        let text = model.to_toml().unwrap();
        Model::parse(&text, "exported.toml")
            .unwrap_or_else(|e| panic!("the export does not parse: {e}\n{text}"))
    }

    #[test]
    fn every_field_survives_a_round_trip() {
        let model = Model::parse(RICH, "sluice.toml").unwrap();
        assert_eq!(round_trip(&model), model);
        // And the text is stable: exporting the re-read model gives the same text.
        let text = model.to_toml().unwrap();
        assert_eq!(round_trip(&model).to_toml().unwrap(), text);
        assert!(text.starts_with(HEADER), "{text}");
    }

    #[test]
    fn durations_keep_their_precision() {
        let model = Model::parse(RICH, "sluice.toml").unwrap();
        let web = &round_trip(&model).listeners[2];
        assert_eq!(web.idle_timeout, Some(Duration::from_secs(30)));
        let check = round_trip(&model).target_groups[0].health_check();
        assert_eq!(check.interval, Duration::from_millis(250));
        assert_eq!(check.timeout, Duration::from_millis(100));
        let text = model.to_toml().unwrap();
        assert!(text.contains("interval = \"250ms\""), "{text}");
        assert!(text.contains("idle_timeout = 90"), "{text}");
    }

    #[test]
    fn defaults_left_out_of_the_file_stay_out() {
        let model = Model::parse(RICH, "sluice.toml").unwrap();
        let text = model.to_toml().unwrap();
        // The udp listener gave no table size, the api group no duration.
        assert_eq!(text.matches("maglev_table_size").count(), 1, "{text}");
        assert_eq!(round_trip(&model).listeners[1].maglev_table_size, None);
    }

    #[test]
    fn run_time_edits_are_exported() {
        let model = Model::parse(RICH, "sluice.toml").unwrap();
        let target = |addr: &str| crate::model::edit::TargetRef {
            group: "l4".into(),
            address: addr.parse().unwrap(),
            port: None,
        };
        let edits = [
            Edit::SetWeight(target("10.0.1.10"), 7),
            Edit::RemoveTarget(target("10.0.1.11")),
            Edit::AddListener(Listener::l4(
                "added",
                "192.0.2.20".parse::<IpAddr>().unwrap(),
                53,
                Protocol::Udp,
                Mode::Nat,
                "l4udp",
            )),
        ];
        let mut edited = model;
        for edit in edits {
            edited = edit
                .apply_to(&edited)
                .unwrap_or_else(|e| panic!("{edit}: {e}"));
        }
        let back = round_trip(&edited);
        assert_eq!(back, edited);
        assert_eq!(
            back.target_groups[0].targets,
            vec![Target {
                address: "10.0.1.10".parse().unwrap(),
                host: None,
                port: None,
                weight: 7
            }]
        );
        assert_eq!(back.listeners.last().unwrap().name, "added");
    }

    #[test]
    fn an_empty_model_exports_as_an_empty_model() {
        let empty = Model::default();
        assert_eq!(round_trip(&empty), empty);
    }
}
