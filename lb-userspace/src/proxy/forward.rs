//! One request: rules, then a fixed response, a redirect, or forwarding to a target chosen
//! by stickiness and the group's algorithm, with one retry on another target for safe,
//! bodiless requests whose connection failed before anything was sent. Errors map to ALB's
//! codes: 400 malformed (hyper answers those before we see them, and `server` counts and
//! logs them; a missing Host here), 502 target refused or broke, 503 no target, 504 target
//! timeout.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use http_body_util::BodyExt;
use hyper::{
    body::{Body, Incoming},
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode, Version,
};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use super::{
    access_log::Record,
    balance,
    body::{self, ProxyBody},
    conn::ConnState,
    context::ConnCtx,
    headers, redirect,
    rules::{host_without_port, RequestView, RuleAction},
    snapshot::{GroupRoutes, ListenerRoutes},
    sticky::{self, StickyKey},
    upgrade, Shared,
};
use crate::model::{Algorithm, Protocol, Stickiness};

pub type TargetClient = Client<HttpConnector, ProxyBody>;

/// Decrements a counter when dropped.
struct Outstanding(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Ends the request's accounting on the connection when dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    conn.state.request_started();
    let in_flight = InFlight(Arc::clone(&conn.state));
    conn.listener.counters.requests.fetch_add(1, Relaxed);
    let mut record = Record {
        kind: if request.version() == Version::HTTP_2 {
            "h2"
        } else {
            conn.proto()
        },
        time: Some(SystemTime::now()),
        listener: conn.listener.name.clone(),
        client: Some(conn.peer),
        request: format!(
            "{} {}://{}{} {:?}",
            request.method(),
            conn.proto(),
            request_host(&request).unwrap_or_else(|| "-".into()),
            request.uri().path_and_query().map_or("/", |p| p.as_str()),
            request.version()
        ),
        user_agent: request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        ssl_cipher: conn.tls.as_ref().map(|t| t.0.clone()),
        ssl_protocol: conn.tls.as_ref().map(|t| t.1.clone()),
        action: "forward",
        ..Record::default()
    };
    let snapshot = shared.snapshot.load_full();
    let Some(routes) = snapshot.listeners.get(&conn.listener.name).cloned() else {
        record.error_reason = Some("ListenerRemoved");
        return Ok(finish_elb(
            &conn,
            record,
            in_flight,
            StatusCode::SERVICE_UNAVAILABLE,
            "listener removed\n",
        ));
    };
    let host = request_host(&request);
    if host.is_none() && request.version() == Version::HTTP_11 {
        record.error_reason = Some("MissingHost");
        return Ok(finish_elb(
            &conn,
            record,
            in_flight,
            StatusCode::BAD_REQUEST,
            "HTTP/1.1 requests need a Host header\n",
        ));
    }
    let view = RequestView {
        host: host.as_deref(),
        path: request.uri().path(),
        method: request.method().as_str(),
        query: request.uri().query(),
        headers: request.headers(),
        source: conn.peer.ip(),
    };
    let (matched, action) = routes.rules.choose(&view);
    record.rule = matched;
    let action = action.clone();
    match action {
        RuleAction::FixedResponse(fixed) => {
            record.action = "fixed-response";
            let status = StatusCode::from_u16(fixed.status).unwrap_or(StatusCode::OK);
            let mut response = Response::new(body::full(fixed.body.clone().unwrap_or_default()));
            *response.status_mut() = status;
            let content_type = fixed.content_type.as_deref().unwrap_or("text/plain");
            if let Ok(value) = HeaderValue::from_str(content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            Ok(finish_with(&conn, record, in_flight, response, None, None))
        }
        RuleAction::Redirect(rule) => {
            record.action = "redirect";
            let local = routes.address;
            let host_text = host.unwrap_or_else(|| local.ip().to_string());
            let location = redirect::location(
                &rule,
                &redirect::Original {
                    protocol: conn.proto(),
                    host: &host_text,
                    port: conn.listener.port,
                    path: request.uri().path(),
                    query: request.uri().query().unwrap_or(""),
                },
            );
            let mut response = Response::new(body::empty());
            *response.status_mut() =
                StatusCode::from_u16(rule.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            record.redirect_url = Some(location);
            Ok(finish_with(&conn, record, in_flight, response, None, None))
        }
        RuleAction::Forward(groups) => {
            let name = match (groups.len(), matched) {
                (1, _) | (_, None) => groups[0].0.clone(),
                (_, Some(priority)) => match routes.group_choice.get(&priority) {
                    Some((names, choice)) => names[choice.pick().unwrap_or(0)].clone(),
                    None => groups[0].0.clone(),
                },
            };
            let Some(group) = routes.groups.get(&name).cloned() else {
                record.error_reason = Some("NoTargetGroup");
                return Ok(finish_elb(
                    &conn,
                    record,
                    in_flight,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no target group\n",
                ));
            };
            record.target_group = Some(name);
            Ok(forward(
                &shared, &conn, &routes, &group, request, record, in_flight, started,
            )
            .await)
        }
    }
}

/// The request's host: the URI's authority (absolute-form, HTTP/2) or the Host header,
/// lower case, without port.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .host()
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(host_without_port)
        })
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The target index a request goes to: its sticky target if the cookie is authentic and
/// the target still takes requests, else a fresh pick (never `exclude`).
fn choose_target(
    shared: &Shared,
    group: &GroupRoutes,
    request_headers: &hyper::HeaderMap,
    exclude: Option<usize>,
) -> Option<usize> {
    let cookies = || {
        request_headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
    };
    let pinned = match &group.stickiness {
        Some(Stickiness::LbCookie { .. }) => sticky::find_cookie(cookies(), sticky::LB_COOKIE)
            .or_else(|| sticky::find_cookie(cookies(), sticky::LB_COOKIE_CORS)),
        Some(Stickiness::AppCookie { cookie_name, .. }) => {
            sticky::find_cookie(cookies(), cookie_name)
                .and_then(|_| sticky::find_cookie(cookies(), sticky::APP_COOKIE))
        }
        None => None,
    }
    .and_then(|value| verify(&shared.key, value, &group.name))
    .and_then(|addr| group.by_addr.get(&addr).copied())
    .filter(|i| Some(*i) != exclude);
    if pinned.is_some() {
        return pinned;
    }
    if group.stickiness.is_some() {
        group.counters.non_sticky_requests.fetch_add(1, Relaxed);
    }
    let allowed = |i: usize| Some(i) != exclude;
    match group.algorithm {
        Algorithm::LeastOutstandingRequests => {
            let loads: Vec<usize> = group
                .targets
                .iter()
                .map(|t| t.outstanding.load(Relaxed))
                .collect();
            let start = shared.rotation.fetch_add(1, Relaxed) as usize;
            balance::least_outstanding(&loads, start, allowed)
        }
        Algorithm::RoundRobin | Algorithm::Maglev => group.round_robin.pick_where(allowed),
    }
}

fn verify(key: &StickyKey, value: &str, group: &str) -> Option<SocketAddr> {
    match key.verify(value, group, unix_now()) {
        Ok(addr) => Some(addr),
        Err(e) => {
            log::debug!("stickiness cookie for target group '{group}' refused: {e}");
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Arc<Shared>,
    conn: &Arc<ConnCtx>,
    routes: &ListenerRoutes,
    group: &Arc<GroupRoutes>,
    mut request: Request<Incoming>,
    mut record: Record,
    in_flight: InFlight,
    started: Instant,
) -> Response<ProxyBody> {
    let upgrade = headers::wants_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, incoming) = request.into_parts();
    let safe = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let retryable = safe && incoming.is_end_stream() && !upgrade;
    let received = Arc::new(AtomicU64::new(0));
    let mut request_body = Some(
        body::Tracked::new(
            incoming.map_err(Into::into).boxed_unsync(),
            Arc::clone(&received),
            || {},
        )
        .boxed_unsync(),
    );
    let mut headers = parts.headers.clone();
    headers::remove_hop_by_hop(&mut headers, upgrade);
    headers::add_forwarded(
        &mut headers,
        conn.peer.ip(),
        conn.proto(),
        conn.listener.port,
    );
    if !headers.contains_key(header::HOST) {
        // HTTP/2 carries the host in :authority; HTTP/1.1 targets need Host.
        if let Some(value) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, value);
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();

    let mut exclude = None;
    let mut retried = false;
    let (response, target, sent_at, outstanding) = loop {
        let Some(index) = choose_target(shared, group, &parts.headers, exclude) else {
            record.error_reason = Some(if retried {
                "TargetConnectionError"
            } else {
                "NoTarget"
            });
            let status = if retried {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return finish_elb(
                conn,
                record,
                in_flight,
                status,
                if retried {
                    "bad gateway\n"
                } else {
                    "no healthy target\n"
                },
            );
        };
        let target = &group.targets[index];
        record.target = Some(target.key.addr);
        let mut outgoing = Request::new(request_body.take().unwrap_or_else(body::empty));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = match format!("http://{}{path}", target.key.addr).parse() {
            Ok(uri) => uri,
            Err(_) => {
                record.error_reason = Some("BadUri");
                return finish_elb(
                    conn,
                    record,
                    in_flight,
                    StatusCode::BAD_REQUEST,
                    "bad request target\n",
                );
            }
        };
        *outgoing.headers_mut() = headers.clone();
        target.outstanding.fetch_add(1, Relaxed);
        let outstanding = Outstanding(Arc::clone(&target.outstanding));
        let sent_at = Instant::now();
        record.request_processing = Some(sent_at - started);
        conn.state.awaiting_target(true);
        let answered =
            tokio::time::timeout(routes.idle_timeout, shared.client.request(outgoing)).await;
        conn.state.awaiting_target(false);
        match answered {
            Ok(Ok(response)) => break (response, target.key.clone(), sent_at, outstanding),
            Ok(Err(e)) if e.is_connect() && retryable && !retried => {
                log::debug!(
                    "target {} of '{}' refused a connection; retrying on another target: {e:?}",
                    target.key.addr,
                    group.name
                );
                exclude = Some(index);
                retried = true;
            }
            Ok(Err(e)) => {
                log::debug!("target {} of '{}': {e:?}", target.key.addr, group.name);
                record.error_reason = Some(if e.is_connect() {
                    "TargetConnectionError"
                } else {
                    "TargetResponseError"
                });
                record.target_processing = Some(sent_at.elapsed());
                return finish_elb(
                    conn,
                    record,
                    in_flight,
                    StatusCode::BAD_GATEWAY,
                    "bad gateway\n",
                );
            }
            Err(_) => {
                record.error_reason = Some("TargetTimeout");
                record.target_processing = Some(sent_at.elapsed());
                return finish_elb(
                    conn,
                    record,
                    in_flight,
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout\n",
                );
            }
        }
    };
    let target_time = sent_at.elapsed();
    record.target_processing = Some(target_time);
    let status = response.status();
    record.target_status = Some(status.as_u16());
    group.counters.target_response(status.as_u16(), target_time);

    let mut response = response;
    let upgraded = upgrade && status == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        if let Some(client_upgrade) = client_upgrade {
            let target_upgrade = hyper::upgrade::on(&mut response);
            record.action = "forward-upgrade";
            tokio::spawn(upgrade::tunnel(
                Arc::clone(shared),
                Arc::clone(conn),
                target.clone(),
                client_upgrade,
                target_upgrade,
                routes.idle_timeout,
            ));
        }
    }
    let (mut head, target_body) = response.into_parts();
    headers::remove_hop_by_hop(&mut head.headers, upgraded);
    set_sticky_cookies(
        shared,
        conn,
        group,
        &target,
        &parts.headers,
        &mut head.headers,
    );
    let response = Response::from_parts(head, target_body.map_err(Into::into).boxed_unsync());
    record.received_bytes = received.load(Relaxed);
    finish_with(
        conn,
        record,
        in_flight,
        response,
        Some(outstanding),
        Some(received),
    )
}

/// Stickiness cookies on a forwarded response: lb_cookie always (its expiry refreshed, and
/// a fresh pick pinned); app_cookie as [`sticky::app_cookie_due`] says.
fn set_sticky_cookies(
    shared: &Shared,
    conn: &ConnCtx,
    group: &GroupRoutes,
    target: &crate::model::TargetKey,
    request_headers: &hyper::HeaderMap,
    headers: &mut hyper::HeaderMap,
) {
    let Some(stickiness) = &group.stickiness else {
        return;
    };
    let duration = stickiness.duration();
    let value = || {
        shared
            .key
            .sign(&group.name, target.addr, unix_now() + duration.as_secs())
    };
    let app_cookie_set = match stickiness {
        Stickiness::AppCookie { cookie_name, .. } => sticky::sets_cookie(
            headers
                .get_all(header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            cookie_name,
        ),
        Stickiness::LbCookie { .. } => false,
    };
    let mut add = |cookie: String| {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    };
    match stickiness {
        Stickiness::LbCookie { .. } => {
            let value = value();
            add(sticky::set_cookie(
                sticky::LB_COOKIE,
                &value,
                duration,
                false,
            ));
            if conn.listener.protocol == Protocol::Https {
                add(sticky::set_cookie(
                    sticky::LB_COOKIE_CORS,
                    &value,
                    duration,
                    true,
                ));
            }
        }
        Stickiness::AppCookie { cookie_name, .. } => {
            let carried = sticky::find_cookie(
                request_headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
                cookie_name,
            )
            .is_some();
            if sticky::app_cookie_due(app_cookie_set, carried) {
                let https = conn.listener.protocol == Protocol::Https;
                add(sticky::set_cookie(
                    sticky::APP_COOKIE,
                    &value(),
                    duration,
                    https,
                ));
            }
        }
    }
}

/// A response the proxy makes itself because of an error.
fn finish_elb(
    conn: &ConnCtx,
    record: Record,
    in_flight: InFlight,
    status: StatusCode,
    text: &'static str,
) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    finish_with(conn, record, in_flight, response, None, None)
}

/// Wraps the response body so that its end writes the access log line and releases the
/// request's counters.
fn finish_with(
    conn: &ConnCtx,
    mut record: Record,
    in_flight: InFlight,
    response: Response<ProxyBody>,
    outstanding: Option<Outstanding>,
    received: Option<Arc<AtomicU64>>,
) -> Response<ProxyBody> {
    let status = response.status().as_u16();
    record.elb_status = status;
    if record.target_status.is_none() {
        conn.listener.counters.elb_response(status);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let head_at = Instant::now();
    let sink = conn.listener.sink.clone();
    let counted = Arc::clone(&sent);
    let (head, body) = response.into_parts();
    let body = body::Tracked::new(body, sent, move || {
        record.sent_bytes = counted.load(Relaxed);
        if let Some(received) = received {
            record.received_bytes = received.load(Relaxed);
        }
        record.response_processing = Some(head_at.elapsed());
        sink.record(&record);
        drop(outstanding);
        drop(in_flight);
    });
    Response::from_parts(head, body.boxed_unsync())
}

/// How long the target client keeps idle connections: shorter than common application
/// keep-alive timeouts (Node's 5 s is the shortest usual one), so a pooled connection is
/// rarely reused just as the target closes it (that case is retried by the client anyway).
pub const POOL_IDLE: Duration = Duration::from_secs(4);

pub fn target_client() -> TargetClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .set_host(false)
        .build(connector)
}
