//! One request: rules, then a fixed response, a redirect, or forwarding to a target chosen
//! by stickiness and the group's algorithm (ejected targets last, see `outlier`), with one
//! retry on another target, whatever the method, when the connection to the first failed
//! before anything was sent. Errors map to ALB's
//! codes: 400 malformed (hyper answers those before we see them, and `server` counts and
//! logs them; a missing Host here), 502 target refused or broke, 503 no target, 504 target
//! timeout.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use http_body_util::BodyExt;
use hyper::{
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode, Version,
};

use super::{
    access_log::Record,
    authority::{self, AuthorityError},
    balance,
    body::{self, ProxyBody},
    conn::ConnState,
    context::ConnCtx,
    cookie_keys::CookieKeys,
    headers,
    outlier::Outcome,
    redirect,
    rules::{RequestView, RuleAction},
    snapshot::{GroupRoutes, ListenerRoutes, RoutedTarget},
    sticky, upgrade,
    upstream::{self, pool},
    Shared,
};
use crate::model::{Algorithm, Stickiness};

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

/// Serves one request: hyper's (its body an `Incoming`), or one `server` parsed itself
/// (`h1`: a GET without a body).
pub async fn handle<B>(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    request: Request<B>,
) -> Result<Response<ProxyBody>, Infallible>
where
    B: hyper::body::Body<Data = hyper::body::Bytes> + Unpin + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let started = Instant::now();
    conn.state.request_started();
    if !hyper::body::Body::is_end_stream(request.body()) {
        conn.state.request_body_unread();
    }
    if headers::asks_to_close(request.version(), request.headers()) {
        conn.state.request_closes();
    }
    let in_flight = InFlight(Arc::clone(&conn.state));
    let listener = conn.listener();
    listener.counters.requests.fetch_add(1, Relaxed);
    let authority = authority::of_request(request.version(), request.uri(), request.headers());
    let kind = if request.version() == Version::HTTP_2 {
        "h2"
    } else {
        conn.proto()
    };
    // Nothing is built for the access log unless a line will be written.
    let mut record = if listener.sink.enabled() {
        let shown_host = match &authority {
            Ok(Some(authority)) => authority.header_value(),
            _ => "-".to_string(),
        };
        Record {
            kind,
            time: Some(SystemTime::now()),
            listener: listener.name.clone(),
            client: Some(conn.peer),
            request: format!(
                "{} {}://{}{} {:?}",
                request.method(),
                conn.proto(),
                shown_host,
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
        }
    } else {
        Record {
            kind,
            action: "forward",
            ..Record::default()
        }
    };
    let snapshot = shared.snapshot.load();
    let Some(routes) = snapshot.listeners.get(&listener.name).cloned() else {
        record.error_reason = Some("ListenerRemoved");
        return Ok(finish_elb(
            &conn,
            record,
            in_flight,
            StatusCode::SERVICE_UNAVAILABLE,
            "listener removed\n",
        ));
    };
    if request.method() == Method::CONNECT {
        // A load balancer is no forward proxy: nothing is tunnelled to a target.
        record.error_reason = Some("MethodNotAllowed");
        let mut response =
            error_response(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        return Ok(finish_with(&conn, record, in_flight, response, None, None));
    }
    let authority = match authority {
        Ok(authority) => authority,
        Err(e) => {
            record.error_reason = Some(match e {
                AuthorityError::Missing => "MissingHost",
                _ => "InvalidHost",
            });
            log::debug!(
                "listener '{}': request from {} refused: {e}",
                listener.name,
                conn.peer
            );
            return Ok(finish_elb(
                &conn,
                record,
                in_flight,
                StatusCode::BAD_REQUEST,
                "bad request: the Host is missing, repeated or invalid\n",
            ));
        }
    };
    if request.method() == Method::OPTIONS && request.uri() == "*" {
        // `OPTIONS *` asks the server itself, not a resource: the load balancer answers.
        record.action = "options";
        let mut response = Response::new(body::empty());
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        return Ok(finish_with(&conn, record, in_flight, response, None, None));
    }
    let host = authority.as_ref().map(|a| a.host.as_ref());
    let view = RequestView {
        host,
        path: request.uri().path(),
        method: request.method().as_str(),
        query: request.uri().query(),
        headers: request.headers(),
        source: conn.peer.ip(),
    };
    let (matched, action) = routes.rules.choose(&view);
    record.rule = matched;
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
            let host_text = host.map_or_else(|| local.ip().to_string(), str::to_string);
            let location = redirect::location(
                rule,
                &redirect::Original {
                    protocol: conn.proto(),
                    host: &host_text,
                    port: conn.listener().port,
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
            let name: &str = match (groups.len(), matched) {
                (1, _) | (_, None) => &groups[0].0,
                (_, Some(priority)) => {
                    match sticky_group(&shared, &routes, groups, request.headers()) {
                        Some(pinned) => pinned,
                        None => match routes.group_choice.get(&priority) {
                            Some((names, choice)) => &names[choice.pick().unwrap_or(0)],
                            None => &groups[0].0,
                        },
                    }
                }
            };
            let Some(group) = routes.groups.get(name).cloned() else {
                record.error_reason = Some("NoTargetGroup");
                return Ok(finish_elb(
                    &conn,
                    record,
                    in_flight,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no target group\n",
                ));
            };
            if listener.sink.enabled() {
                record.target_group = Some(name.to_string());
            }
            // The authority the rules matched, whatever the client put in Host (absolute-form,
            // HTTP/2's :authority): usually what the client sent, kept as it is.
            let sent = request.headers().get(header::HOST);
            let host = match (authority, sent) {
                (Some(authority), Some(sent)) if authority.is_header_value(sent.as_bytes()) => {
                    Some(sent.clone())
                }
                (Some(authority), _) => HeaderValue::from_str(&authority.header_value()).ok(),
                // HTTP/1.0 without Host: targets are spoken to in HTTP/1.1, which needs one.
                (None, _) => HeaderValue::from_str(&routes.address.to_string()).ok(),
            };
            Ok(forward(
                &shared, &conn, &routes, &group, request, host, record, in_flight, started,
            )
            .await)
        }
    }
}

/// The methods a target may be asked (what `Allow` lists for CONNECT and `OPTIONS *`).
const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The stickiness cookie a request carries for `group`'s kind of stickiness: `SLUICE` (or
/// `SLUICECORS`) for lb_cookie, `SLUICEAPP` for app_cookie while the application's cookie is
/// there too.
fn sticky_cookie<'a>(
    group: &GroupRoutes,
    request_headers: &'a hyper::HeaderMap,
) -> Option<&'a str> {
    let cookies = || {
        request_headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
    };
    match &group.stickiness {
        Some(Stickiness::LbCookie { .. }) => sticky::find_cookie(cookies(), sticky::LB_COOKIE)
            .or_else(|| sticky::find_cookie(cookies(), sticky::LB_COOKIE_CORS)),
        Some(Stickiness::AppCookie { cookie_name, .. }) => {
            sticky::find_cookie(cookies(), cookie_name)
                .and_then(|_| sticky::find_cookie(cookies(), sticky::APP_COOKIE))
        }
        None => None,
    }
}

/// Of a forward to several groups, the sticky group the request's cookie pins (the first in
/// the rule's order with weight above 0): a client stays on the group it was sent to, as
/// with ALB's target group stickiness, even when that group's target must be picked afresh.
fn sticky_group<'a>(
    shared: &Shared,
    routes: &ListenerRoutes,
    groups: &'a [(String, u32)],
    request_headers: &hyper::HeaderMap,
) -> Option<&'a str> {
    let keys = shared.keys.load();
    groups
        .iter()
        .filter(|(_, weight)| *weight > 0)
        .find(|(name, _)| {
            routes.groups.get(name).is_some_and(|group| {
                sticky_cookie(group, request_headers)
                    .is_some_and(|value| keys.verify(value, name, unix_now()).is_ok())
            })
        })
        .map(|(name, _)| name.as_str())
}

/// The target index a request goes to: its sticky target if the cookie is authentic and
/// the target still takes requests, else a fresh pick (never `exclude`).
fn choose_target(
    shared: &Shared,
    group: &GroupRoutes,
    sticky: &StickyRequest,
    exclude: Option<usize>,
) -> Option<usize> {
    let pinned = sticky
        .cookie
        .as_deref()
        .and_then(|value| verify(&shared.keys.load(), value, &group.name))
        .and_then(|addr| group.by_addr.get(&addr).copied())
        .filter(|i| Some(*i) != exclude);
    if pinned.is_some() {
        return pinned;
    }
    if group.stickiness.is_some() {
        group.counters.non_sticky_requests.fetch_add(1, Relaxed);
    }
    let pick = |allowed: &dyn Fn(usize) -> bool| match group.algorithm {
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
    };
    // Ejected targets only when every other one is ejected too (see `outlier`).
    pick(&|i| Some(i) != exclude && !group.targets[i].outlier.ejected())
        .or_else(|| pick(&|i| Some(i) != exclude))
}

/// Feeds a request's outcome to its target's outlier detection.
fn note_outcome(group: &GroupRoutes, target: &RoutedTarget, outcome: Outcome) {
    let Some(detection) = &group.detection else {
        return;
    };
    if target.outlier.record(outcome, detection) {
        log::warn!(
            "target {} of '{}' ejected after {} consecutive failed requests ({}); no new requests for at least {:?}",
            target.key.addr,
            group.name,
            detection.consecutive_errors,
            match outcome {
                Outcome::ConnectionError => "connection errors".to_string(),
                Outcome::Response(status) => format!("last answered {status}"),
            },
            detection.ejection
        );
    }
}

fn verify(keys: &CookieKeys, value: &str, group: &str) -> Option<SocketAddr> {
    match keys.verify(value, group, unix_now()) {
        Ok(addr) => Some(addr),
        Err(e) => {
            log::debug!("stickiness cookie for target group '{group}' refused: {e}");
            None
        }
    }
}

/// What stickiness needs of a request's cookies, read before its headers go to the target
/// (a client may list `Cookie` in `Connection`, which removes it from what is forwarded).
#[derive(Default)]
struct StickyRequest {
    /// The stickiness cookie for the group's kind of stickiness.
    cookie: Option<String>,
    /// app_cookie: whether the request carries the application's own cookie.
    app_cookie: bool,
}

impl StickyRequest {
    fn of(group: &GroupRoutes, headers: &hyper::HeaderMap) -> StickyRequest {
        let Some(stickiness) = &group.stickiness else {
            return StickyRequest::default();
        };
        let app_cookie = match stickiness {
            Stickiness::AppCookie { cookie_name, .. } => sticky::find_cookie(
                headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
                cookie_name,
            )
            .is_some(),
            Stickiness::LbCookie { .. } => false,
        };
        StickyRequest {
            cookie: sticky_cookie(group, headers).map(str::to_string),
            app_cookie,
        }
    }
}

/// How a request fared with one target.
enum Attempt {
    Answered(Response<upstream::Body>),
    /// No connection could be opened: nothing was sent, another target may be tried.
    NoConnection(pool::ConnectError, Request<ProxyBody>),
    /// Sent (or partly), then the connection failed or the response was malformed.
    Failed(upstream::Error),
    /// No response head within the idle timeout.
    TimedOut,
}

/// Sends `request` to `target` on a pooled connection (or a new one). A reused connection
/// that the target closed while it was idle gets nothing: the request goes again on a new
/// connection, whatever its method.
async fn attempt(
    target: SocketAddr,
    request: Request<ProxyBody>,
    upload: &body::Upload,
    idle_timeout: Duration,
) -> Attempt {
    let mut request = request;
    let mut fresh = false;
    loop {
        let conn = if fresh {
            Box::pin(pool::connect(target)).await
        } else {
            pool::checkout(target).await
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => return Attempt::NoConnection(e, request),
        };
        // ALB's idle timeout: inactivity, so an upload that keeps moving is never cut.
        let sent = upstream::send(conn, request);
        match body::until_idle(sent, upload, idle_timeout).await {
            Some(Ok(response)) => return Attempt::Answered(response),
            Some(Err(upstream::SendError::Unsent(unsent))) => {
                log::debug!(
                    "target {target}: a kept-alive connection was closed; sending again on a new one"
                );
                request = *unsent;
                fresh = true;
            }
            Some(Err(upstream::SendError::Failed(e))) => return Attempt::Failed(e),
            None => return Attempt::TimedOut,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward<B>(
    shared: &Arc<Shared>,
    conn: &Arc<ConnCtx>,
    routes: &ListenerRoutes,
    group: &Arc<GroupRoutes>,
    mut request: Request<B>,
    host: Option<HeaderValue>,
    mut record: Record,
    in_flight: InFlight,
    started: Instant,
) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = hyper::body::Bytes> + Unpin + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let upgrade = headers::wants_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, incoming) = request.into_parts();
    let sticky = StickyRequest::of(group, &parts.headers);
    // A request without a body (most) needs no tracking: nothing to count, time or read.
    let (request_body, upload) = if hyper::body::Body::is_end_stream(&incoming) {
        (body::empty(), None)
    } else {
        let upload = Arc::new(body::Upload::new());
        let state = Arc::clone(&conn.state);
        let read = body::ReadToEnd::new(incoming, move || state.request_body_read());
        (upload.watch(read), Some(upload))
    };
    let no_upload;
    let watched = match &upload {
        Some(upload) => upload.as_ref(),
        None => {
            no_upload = body::Upload::new();
            &no_upload
        }
    };
    // The client's head, rewritten in place for the target.
    let mut headers = parts.headers;
    headers::remove_hop_by_hop(&mut headers, upgrade);
    headers::add_forwarded(
        &mut headers,
        conn.peer.ip(),
        conn.proto(),
        conn.listener().forwarded_port.clone(),
    );
    // The authority the rules matched (also when the client listed Host in Connection).
    if let Some(host) = host {
        if headers.get(header::HOST) != Some(&host) {
            headers.insert(header::HOST, host);
        }
    }
    // Origin-form: the path and query as the client sent them (HTTP/2's too).
    let mut uri = hyper::http::uri::Parts::default();
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")),
    );
    let mut outgoing = Request::new(request_body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = hyper::Uri::from_parts(uri).expect("a path alone is a valid URI");
    *outgoing.headers_mut() = headers;

    let mut exclude = None;
    let mut retried = false;
    let (response, index, sent_at, outstanding) = loop {
        let Some(index) = choose_target(shared, group, &sticky, exclude) else {
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
        target.outstanding.fetch_add(1, Relaxed);
        target.counters.requests.fetch_add(1, Relaxed);
        let outstanding = Outstanding(Arc::clone(&target.outstanding));
        let sent_at = Instant::now();
        record.request_processing = Some(sent_at - started);
        conn.state.awaiting_target(true);
        let attempted = attempt(target.key.addr, outgoing, watched, routes.idle_timeout).await;
        conn.state.awaiting_target(false);
        match attempted {
            Attempt::Answered(response) => break (response, index, sent_at, outstanding),
            Attempt::NoConnection(e, unsent) => {
                group
                    .counters
                    .target_connection_errors
                    .fetch_add(1, Relaxed);
                target.counters.errors.fetch_add(1, Relaxed);
                note_outcome(group, target, Outcome::ConnectionError);
                if !upgrade && !retried {
                    // Nothing was sent: another target, whatever the method.
                    log::debug!(
                        "target {} of '{}': no connection; retrying on another target: {e}",
                        target.key.addr,
                        group.name
                    );
                    outgoing = unsent;
                    exclude = Some(index);
                    retried = true;
                    continue;
                }
                log::debug!("target {} of '{}': {e}", target.key.addr, group.name);
                record.error_reason = Some("TargetConnectionError");
                record.target_processing = Some(sent_at.elapsed());
                return finish_elb(
                    conn,
                    record,
                    in_flight,
                    StatusCode::BAD_GATEWAY,
                    "bad gateway\n",
                );
            }
            Attempt::Failed(_) if watched.is_broken() => {
                // The client's body broke (a malformed chunk, a reset): its error, not the
                // target's.
                record.error_reason = Some("ClientBodyError");
                record.target_processing = Some(sent_at.elapsed());
                return finish_elb(
                    conn,
                    record,
                    in_flight,
                    StatusCode::BAD_REQUEST,
                    "bad request: the request body is malformed or was cut\n",
                );
            }
            Attempt::Failed(e) => {
                target.counters.errors.fetch_add(1, Relaxed);
                note_outcome(group, target, Outcome::ConnectionError);
                log::debug!("target {} of '{}': {e:?}", target.key.addr, group.name);
                record.error_reason = Some("TargetResponseError");
                record.target_processing = Some(sent_at.elapsed());
                return finish_elb(
                    conn,
                    record,
                    in_flight,
                    StatusCode::BAD_GATEWAY,
                    "bad gateway\n",
                );
            }
            Attempt::TimedOut => {
                target.counters.errors.fetch_add(1, Relaxed);
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
    let routed = &group.targets[index];
    let target_time = sent_at.elapsed();
    record.target_processing = Some(target_time);
    let status = response.status();
    record.target_status = Some(status.as_u16());
    group.counters.target_response(status.as_u16(), target_time);
    routed
        .counters
        .responses
        .target_response(status.as_u16(), target_time);
    note_outcome(group, routed, Outcome::Response(status.as_u16()));

    let mut response = response;
    let upgraded = upgrade && status == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        // The connection is the tunnel's now.
        let target_upgrade = response.body_mut().upgrade();
        if let (Some(client_upgrade), Some(target_upgrade)) = (client_upgrade, target_upgrade) {
            record.action = "forward-upgrade";
            tokio::spawn(upgrade::tunnel(
                Arc::clone(shared),
                Arc::clone(conn),
                routed.key.clone(),
                client_upgrade,
                target_upgrade,
                routes.idle_timeout,
            ));
        }
    }
    let (mut head, target_body) = response.into_parts();
    headers::remove_hop_by_hop(&mut head.headers, upgraded);
    set_sticky_cookies(shared, conn, group, &routed.key, &sticky, &mut head.headers);
    let response = Response::from_parts(head, target_body);
    finish_with(conn, record, in_flight, response, Some(outstanding), upload)
}

/// Stickiness cookies on a forwarded response: lb_cookie always (its expiry refreshed, and
/// a fresh pick pinned); app_cookie as [`sticky::app_cookie_due`] says.
fn set_sticky_cookies(
    shared: &Shared,
    conn: &ConnCtx,
    group: &GroupRoutes,
    target: &crate::model::TargetKey,
    request: &StickyRequest,
    headers: &mut hyper::HeaderMap,
) {
    let Some(stickiness) = &group.stickiness else {
        return;
    };
    let duration = stickiness.duration();
    // This group's pin, beside the pins the request's cookie holds for other groups.
    let value = || {
        let keys = shared.keys.load();
        let now = unix_now();
        let held = request
            .cookie
            .as_deref()
            .map(|value| keys.pins(value, now))
            .unwrap_or_default();
        keys.signing().seal(&held.with(sticky::Pin {
            group: group.name.clone(),
            target: target.addr,
            expires: now + duration.as_secs(),
        }))
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
            if conn.https() {
                add(sticky::set_cookie(
                    sticky::LB_COOKIE_CORS,
                    &value,
                    duration,
                    true,
                ));
            }
        }
        Stickiness::AppCookie { .. } => {
            if sticky::app_cookie_due(app_cookie_set, request.app_cookie) {
                let https = conn.https();
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

/// A plain-text response the proxy makes itself.
fn error_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response the proxy makes itself because of an error.
fn finish_elb(
    conn: &ConnCtx,
    record: Record,
    in_flight: InFlight,
    status: StatusCode,
    text: &'static str,
) -> Response<ProxyBody> {
    finish_with(
        conn,
        record,
        in_flight,
        error_response(status, text),
        None,
        None,
    )
}

/// Wraps the response body so that its end writes the access log line and releases the
/// request's counters (the body boxed once, with its wrapper).
fn finish_with<B>(
    conn: &ConnCtx,
    mut record: Record,
    in_flight: InFlight,
    response: Response<B>,
    target: Option<Outstanding>,
    upload: Option<Arc<body::Upload>>,
) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = hyper::body::Bytes, Error = body::BoxError>
        + Unpin
        + Send
        + 'static,
{
    let status = response.status().as_u16();
    record.elb_status = status;
    let listener = conn.listener();
    if record.target_status.is_none() {
        listener.counters.elb_response(status);
    }
    let sink = listener.sink.clone();
    drop(listener);
    // Timed only for a line that will be written.
    let head_at = sink.enabled().then(Instant::now);
    let (head, body) = response.into_parts();
    let body = body::Tracked::new(body, move |sent| {
        record.sent_bytes = sent;
        if let Some(upload) = upload {
            record.received_bytes = upload.received();
        }
        record.response_processing = head_at.map(|at| at.elapsed());
        sink.record(&record);
        drop(target);
        drop(in_flight);
    });
    Response::from_parts(head, body.boxed_unsync())
}
