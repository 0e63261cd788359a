//! How the CLI reports a failed verb: what it tried (which service, at
//! which URL, with which token, each and where it came from) and what to
//! do about it. Every verb's error passes through [`report`] in `main`,
//! so the verbs themselves only add what they were doing
//! (`.context("look up tenant acme")`).

use shardline_client::ClientError;

use crate::endpoints::{Endpoints, Source, Target};

/// The service a verb talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Manager,
    Router,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Manager => "manager",
            Service::Router => "router",
        }
    }

    fn url_flag(self) -> (&'static str, &'static str) {
        match self {
            Service::Manager => ("--manager", "SHARDLINE_MANAGER_URL"),
            Service::Router => ("--router", "SHARDLINE_ROUTER_URL"),
        }
    }

    fn token_names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Service::Manager => ("admin token", "--admin-token", "SHARDLINE_ADMIN_TOKEN"),
            Service::Router => ("app token", "--app-token", "SHARDLINE_APP_TOKEN"),
        }
    }

    fn target(self, ep: &Endpoints) -> Option<Target> {
        match self {
            Service::Manager => ep.manager_target().ok(),
            Service::Router => ep.router_target().ok(),
        }
    }
}

/// The text printed for a failed verb: `error: ...` and, when the
/// failure was talking to a service, a line of advice.
pub fn report(err: &anyhow::Error, service: Option<Service>, ep: &Endpoints) -> String {
    let plain = format!("error: {err:#}");
    let Some(service) = service else {
        return plain;
    };
    let Some(target) = service.target(ep) else {
        return plain;
    };
    // The verb's own context, outermost first, down to the client error.
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            let Some((what, advice)) = explain(client, service, &target) else {
                return plain;
            };
            parts.push(what);
            return format!("error: {}\n{advice}", parts.join(": "));
        }
        parts.push(cause.to_string());
    }
    plain
}

/// What went wrong talking to `service`, and what to do; `None` when the
/// client error says it all (the service's own refusal of a request).
fn explain(err: &ClientError, service: Service, t: &Target) -> Option<(String, String)> {
    let name = service.name();
    let at = at(&t.url);
    let (url_flag, url_env) = service.url_flag();
    let where_to = match &t.url_from {
        // The URL is a dev setup's: it was stopped, or is another's.
        Source::DevJson(path) => format!(
            "Is the `shardline dev` that wrote {} still running? Start it again with \
             `shardline dev` (same data dir), or give another {name}'s URL with \
             {url_flag} or ${url_env}.",
            path.display()
        ),
        Source::Flag(_) | Source::Env(_) | Source::File(_) => format!(
            "Is it running? Start shardline on this machine with `shardline dev`, \
             or give the {name}'s URL with {url_flag} or ${url_env}."
        ),
    };
    match err {
        ClientError::Connect(cause) => Some((
            format!(
                "cannot connect to the {name} {at} (URL from {}): {}",
                t.url_from,
                cause_text(cause)
            ),
            where_to,
        )),
        ClientError::Transport(cause) => Some((
            format!(
                "the connection to the {name} {at} (URL from {}) failed: {}",
                t.url_from,
                cause_text(cause)
            ),
            format!(
                "The request may or may not have been carried out. Is that URL a \
                 shardline {name}? {where_to}"
            ),
        )),
        ClientError::Timeout => Some((
            format!(
                "the {name} {at} (URL from {}) did not answer in time",
                t.url_from
            ),
            format!(
                "The request may or may not have been carried out: check with a \
                 read (`shardline status`) before trying again. Is that URL a \
                 shardline {name}? {where_to}"
            ),
        )),
        ClientError::Api { status: 401, error } => {
            let (what, flag, env) = service.token_names();
            Some((
                format!(
                    "the {name} {at} refused the {what} from {}: {}",
                    t.token_from, error.message
                ),
                format!(
                    "Give the {name}'s {what} with {flag}, ${env} or a file named by \
                     {flag}-file or ${env}_FILE{}.",
                    dev_hint(&t.token_from, service)
                ),
            ))
        }
        ClientError::Api { .. } | ClientError::Decode(_) | ClientError::Config(_) => None,
    }
}

/// `at URL`, or `at any of A, B` for several.
fn at(url: &str) -> String {
    if url.contains(',') {
        format!("at any of {}", url.replace(',', ", "))
    } else {
        format!("at {url}")
    }
}

/// hyper's cause without its "client error (Connect): " lead.
fn cause_text(cause: &str) -> &str {
    cause
        .strip_prefix("client error (Connect): ")
        .or_else(|| cause.strip_prefix("client error (SendRequest): "))
        .unwrap_or(cause)
}

/// Where a `shardline dev`'s tokens are, when the token came from
/// elsewhere and so may belong to another setup.
fn dev_hint(from: &Source, service: Service) -> String {
    let field = match service {
        Service::Manager => "admin_token",
        Service::Router => "app_token",
    };
    match from {
        Source::DevJson(path) => format!(
            " (the one in {} is from an earlier `shardline dev`, or for another manager)",
            path.display()
        ),
        Source::Flag(_) | Source::Env(_) | Source::File(_) => {
            format!(" (a `shardline dev` writes it to dev.json as {field})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_api::{ApiError, ErrorCode};

    fn target() -> Target {
        Target {
            url: "http://127.0.0.1:9".into(),
            url_from: Source::Env("SHARDLINE_MANAGER_URL"),
            token: "t".into(),
            token_from: Source::File("/run/secrets/admin".into()),
        }
    }

    #[test]
    fn connect_failures_name_the_url_and_what_to_do() {
        let err = ClientError::Connect(
            "client error (Connect): tcp connect error: Connection refused (os error 111)".into(),
        );
        let (what, advice) = explain(&err, Service::Manager, &target()).unwrap();
        assert_eq!(
            what,
            "cannot connect to the manager at http://127.0.0.1:9 (URL from \
             $SHARDLINE_MANAGER_URL): tcp connect error: Connection refused (os error 111)"
        );
        assert!(advice.contains("`shardline dev`"), "{advice}");
        assert!(
            advice.contains("--manager or $SHARDLINE_MANAGER_URL"),
            "{advice}"
        );
    }

    #[test]
    fn refusals_name_the_token_and_its_source() {
        let err = ClientError::Api {
            status: 401,
            error: Box::new(ApiError::new(ErrorCode::Unauthorized, "invalid token")),
        };
        let (what, advice) = explain(&err, Service::Router, &target()).unwrap();
        assert!(
            what.contains("refused the app token from the file /run/secrets/admin"),
            "{what}"
        );
        assert!(advice.contains("$SHARDLINE_APP_TOKEN_FILE"), "{advice}");
        // Other refusals are the service's own words.
        let err = ClientError::Api {
            status: 404,
            error: Box::new(ApiError::new(ErrorCode::NotFound, "no tenant x")),
        };
        assert!(explain(&err, Service::Manager, &target()).is_none());
    }

    #[test]
    fn a_dev_url_points_back_at_its_dev() {
        let mut t = target();
        t.url_from = Source::DevJson("/srv/dev/dev.json".into());
        let err = ClientError::Connect("tcp connect error".into());
        let (what, advice) = explain(&err, Service::Manager, &t).unwrap();
        assert!(what.contains("(URL from /srv/dev/dev.json)"), "{what}");
        assert!(
            advice.contains("the `shardline dev` that wrote /srv/dev/dev.json"),
            "{advice}"
        );
    }

    #[test]
    fn several_urls_read_as_a_list() {
        assert_eq!(at("http://a,http://b"), "at any of http://a, http://b");
    }
}
