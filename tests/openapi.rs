//! The OpenAPI document (`GET /api/v1/openapi.json`) against itself and against the
//! route list of docs/api.md. Needs no daemon: the document is built in-process.

use std::collections::BTreeSet;

use serde_json::Value;
use utoipa::OpenApi;

/// A route the daemon serves now: method, path, the least role it needs (None: no
/// auth) and its path and query parameters.
struct Route {
    method: &'static str,
    path: &'static str,
    role: Option<&'static str>,
    params: &'static [&'static str],
}

const fn route(
    method: &'static str,
    path: &'static str,
    role: Option<&'static str>,
    params: &'static [&'static str],
) -> Route {
    Route {
        method,
        path,
        role,
        params,
    }
}

const VIEWER: Option<&str> = Some("viewer");
const OPERATOR: Option<&str> = Some("operator");
const ADMIN: Option<&str> = Some("admin");

const ROUTES: &[Route] = &[
    route("post", "/api/v1/bots", ADMIN, &[]),
    route("get", "/api/v1/bots", VIEWER, &["pool", "state"]),
    route("get", "/api/v1/bots/{name}", VIEWER, &["name"]),
    route("patch", "/api/v1/bots/{name}", ADMIN, &["name"]),
    route("delete", "/api/v1/bots/{name}", ADMIN, &["name", "purge"]),
    route("post", "/api/v1/bots/{name}/start", OPERATOR, &["name"]),
    route("post", "/api/v1/bots/{name}/stop", OPERATOR, &["name"]),
    route("post", "/api/v1/bots/{name}/restart", OPERATOR, &["name"]),
    route(
        "get",
        "/api/v1/bots/{name}/events",
        VIEWER,
        &["name", "limit", "kind"],
    ),
    route(
        "get",
        "/api/v1/events",
        VIEWER,
        &["bot", "pool", "kind", "limit"],
    ),
    route("post", "/api/v1/bots/{name}/messages", OPERATOR, &["name"]),
    route(
        "get",
        "/api/v1/bots/{name}/messages",
        VIEWER,
        &["name", "conversation", "limit", "before"],
    ),
    route("get", "/api/v1/pools", VIEWER, &[]),
    route("get", "/api/v1/pools/{pool}", VIEWER, &["pool"]),
    route("put", "/api/v1/pools/{pool}", ADMIN, &["pool"]),
    route("delete", "/api/v1/pools/{pool}", ADMIN, &["pool"]),
    route("post", "/api/v1/pools/{pool}/messages", OPERATOR, &["pool"]),
    route(
        "get",
        "/api/v1/pools/{pool}/messages",
        VIEWER,
        &["pool", "conversation", "limit", "before"],
    ),
    route("get", "/api/v1/status", VIEWER, &[]),
    route("get", "/healthz", None, &[]),
    route("get", "/readyz", None, &[]),
    route("get", "/api/v1/openapi.json", None, &[]),
    route(
        "get",
        "/api/v1/bots/{name}/logs",
        VIEWER,
        &["name", "tail", "follow", "level"],
    ),
    route(
        "get",
        "/api/v1/logs",
        VIEWER,
        &["tail", "follow", "level", "bot"],
    ),
    route("get", "/metrics", None, &[]),
    route("post", "/api/v1/auth/login", None, &[]),
    route("get", "/api/v1/auth/whoami", VIEWER, &[]),
    route("post", "/api/v1/users", ADMIN, &[]),
    route("get", "/api/v1/users", ADMIN, &[]),
    route("patch", "/api/v1/users/{username}", VIEWER, &["username"]),
    route("delete", "/api/v1/users/{username}", ADMIN, &["username"]),
    route("get", "/api/v1/ws", OPERATOR, &[]),
];

/// Open routes that still answer 401: a login with a bad pair.
const OPEN_WITH_401: &[&str] = &["/api/v1/auth/login"];

/// Routes whose success body is not JSON: `(path, content types)`.
const NON_JSON_SUCCESS: &[(&str, &[&str])] = &[
    (
        "/api/v1/bots/{name}/logs",
        &["application/x-ndjson", "text/event-stream"],
    ),
    (
        "/api/v1/logs",
        &["application/x-ndjson", "text/event-stream"],
    ),
    ("/metrics", &["text/plain"]),
];

/// Routes docs/api.md lists that are not built yet: `(method, path)`, `*` for any method,
/// a path ending in `*` for a prefix. Remove an entry when its route is built (the test
/// `the_skip_list_only_names_routes_not_built` insists).
const NOT_BUILT_YET: &[(&str, &str)] = &[];

/// 4xx/5xx answers that docs/api.md gives a body other than the error shape:
/// `(path, method, status, schema)`.
const NON_ERROR_BODY_ERRORS: &[(&str, &str, &str, &str)] = &[
    ("/healthz", "get", "503", "Health"),
    ("/readyz", "get", "503", "Ready"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::from_str(botd::http::openapi::document_json()).expect("the document is JSON")
}

/// Every `(path, method, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((path.clone(), m.to_owned(), op.clone()));
            }
        }
    }
    out
}

/// The operation of `r`, which must be in the document.
fn operation<'a>(doc: &'a Value, r: &Route) -> &'a Value {
    let op = &doc["paths"][r.path][r.method];
    assert!(
        op.is_object(),
        "{} {} is not in the document",
        r.method,
        r.path
    );
    op
}

fn responses(op: &Value) -> &serde_json::Map<String, Value> {
    op["responses"].as_object().expect("responses is an object")
}

fn schema_ref(name: &str) -> Value {
    Value::String(format!("#/components/schemas/{name}"))
}

/// The names of an operation's parameters in `location` (`path`, `query`).
fn param_names(op: &Value, location: &str) -> BTreeSet<String> {
    op.get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == location)
        .map(|p| {
            p["name"]
                .as_str()
                .expect("a parameter has a name")
                .to_owned()
        })
        .collect()
}

#[test]
fn the_document_is_openapi_3() {
    let doc = doc();
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3."), "openapi is {version}");
    assert_eq!(doc["info"]["title"], "botd");
    // The served JSON is the document the code declares.
    assert_eq!(
        doc,
        serde_json::to_value(botd::http::openapi::ApiDoc::openapi()).unwrap()
    );
}

#[test]
fn every_route_is_present_with_its_methods_and_no_other() {
    let doc = doc();
    let ops = operations(&doc);
    let found: BTreeSet<(String, String)> =
        ops.iter().map(|(p, m, _)| (p.clone(), m.clone())).collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.path.to_owned(), r.method.to_owned()))
        .collect();
    let missing: Vec<_> = expected.difference(&found).collect();
    let extra: Vec<_> = found.difference(&expected).collect();
    assert!(missing.is_empty(), "missing from the document: {missing:?}");
    assert!(
        extra.is_empty(),
        "in the document but not in ROUTES: {extra:?}"
    );
    let mut ids = BTreeSet::new();
    for (path, method, op) in &ops {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        let tags = op["tags"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(tags, 1, "{method} {path} has {tags} tags");
    }
}

#[test]
fn every_route_declares_its_parameters() {
    let doc = doc();
    for r in ROUTES {
        let op = operation(&doc, r);
        let mut names = param_names(op, "path");
        names.extend(param_names(op, "query"));
        let expected: BTreeSet<String> = r.params.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(names, expected, "{} {}", r.method, r.path);
        // Every `{param}` of the path is a required path parameter.
        for segment in r.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let p = op["parameters"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == name && p["in"] == "path"))
                    .unwrap_or_else(|| panic!("{} {}: no path parameter {name}", r.method, r.path));
                assert_eq!(p["required"], true, "{} {}: {name}", r.method, r.path);
                assert!(
                    p["schema"]["pattern"].is_string(),
                    "{} {}: {name} has no pattern",
                    r.method,
                    r.path
                );
            }
        }
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["in"] == "query" {
                assert_ne!(
                    p["required"], true,
                    "{} {}: query parameters are optional",
                    r.method, r.path
                );
            }
            if p["name"] == "limit" {
                let s = &p["schema"];
                assert_eq!(s["minimum"], 1, "{} {}: limit minimum", r.method, r.path);
                assert_eq!(s["maximum"], 500, "{} {}: limit maximum", r.method, r.path);
                assert_eq!(s["default"], 50, "{} {}: limit default", r.method, r.path);
            }
            if p["name"] == "state" {
                let states: Vec<&str> = p["schema"]["enum"]
                    .as_array()
                    .or_else(|| {
                        p["schema"]["oneOf"]
                            .as_array()
                            .and_then(|o| o.iter().find_map(|s| s["enum"].as_array()))
                    })
                    .expect("state is an enum")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(
                    states,
                    ["stopped", "starting", "running", "stopping", "backoff", "failed"]
                );
            }
        }
    }
}

#[test]
fn every_authenticated_operation_needs_a_bearer_token() {
    let doc = doc();
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    // No document-wide requirement, so the open routes stay open.
    assert!(
        doc.get("security").is_none(),
        "a document-wide security requirement"
    );
    let bearer = serde_json::json!([{ "bearerAuth": [] }]);
    for r in ROUTES {
        let op = operation(&doc, r);
        let what = format!("{} {}", r.method, r.path);
        let responses = responses(op);
        match r.role {
            Some(role) => {
                assert_eq!(op["security"], bearer, "{what}");
                assert_eq!(op["x-botd-role"], role, "{what}");
                for status in ["401", "403", "429"] {
                    assert!(
                        responses.contains_key(status),
                        "{what} does not declare {status}"
                    );
                }
                let forbidden = responses["403"]["description"].as_str().unwrap_or_default();
                assert!(forbidden.contains(role), "{what}: 403 does not name {role}");
            }
            None => {
                let open = op
                    .get("security")
                    .is_none_or(|s| s == &serde_json::json!([]));
                assert!(open, "{what} should need no auth");
                assert!(op.get("x-botd-role").is_none(), "{what}");
                assert!(!responses.contains_key("403"), "{what} declares 403");
                assert_eq!(
                    responses.contains_key("401"),
                    OPEN_WITH_401.contains(&r.path),
                    "{what}: 401"
                );
            }
        }
    }
}

#[test]
fn a_400_is_declared_exactly_where_there_is_input() {
    let doc = doc();
    for (path, method, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let responses = responses(&op);
        let has_body = op.get("requestBody").is_some();
        // The WebSocket's input is its upgrade headers (a plain GET is a 400).
        let has_params = !param_names(&op, "path").is_empty()
            || !param_names(&op, "query").is_empty()
            || path == "/api/v1/ws";
        if has_body {
            let content = op["requestBody"]["content"].as_object().expect("content");
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/json"],
                "{what}: request body media types"
            );
            for status in ["400", "413", "415"] {
                assert!(
                    responses.contains_key(status),
                    "{what} takes a body but does not declare {status}"
                );
            }
        } else {
            for status in ["413", "415"] {
                assert!(
                    !responses.contains_key(status),
                    "{what} takes no body but declares {status}"
                );
            }
        }
        assert_eq!(
            responses.contains_key("400"),
            has_body || has_params,
            "{what}: 400 declared {} with body {has_body}, parameters {has_params}",
            responses.contains_key("400"),
        );
    }
    // The stop body is optional (may be empty, not `null`), the others required.
    let stop = &doc["paths"]["/api/v1/bots/{name}/stop"]["post"]["requestBody"];
    assert_ne!(stop["required"], true);
    assert_eq!(
        stop["content"]["application/json"]["schema"]["$ref"],
        schema_ref("StopRequest")
    );
    for (path, method) in [
        ("/api/v1/bots", "post"),
        ("/api/v1/bots/{name}", "patch"),
        ("/api/v1/bots/{name}/messages", "post"),
        ("/api/v1/pools/{pool}/messages", "post"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["requestBody"]["required"], true,
            "{method} {path}"
        );
    }
}

#[test]
fn every_error_answer_has_the_error_shape() {
    let doc = doc();
    let mut exempt_seen = 0;
    for (path, method, op) in operations(&doc) {
        for (status, response) in responses(&op) {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let what = format!("{method} {path} {status}");
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            let exempt = NON_ERROR_BODY_ERRORS
                .iter()
                .find(|(p, m, s, _)| *p == path && *m == method && s == status);
            match exempt {
                Some((.., name)) => {
                    exempt_seen += 1;
                    assert_eq!(schema, &schema_ref(name), "{what}");
                }
                None => assert_eq!(schema, &schema_ref("ErrorBody"), "{what}"),
            }
            let description = response["description"].as_str().unwrap_or_default();
            assert!(
                description.contains('`'),
                "{what}: the description names no error code"
            );
        }
    }
    assert_eq!(exempt_seen, NON_ERROR_BODY_ERRORS.len());
}

#[test]
fn success_answers_have_their_bodies() {
    let doc = doc();
    for (path, method, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let ok: Vec<_> = responses(&op)
            .keys()
            .filter(|s| s.starts_with('2') || *s == "101")
            .collect();
        assert_eq!(ok.len(), 1, "{what}: success statuses {ok:?}");
        let response = &responses(&op)[ok[0].as_str()];
        if ok[0] == "204" || ok[0] == "101" {
            assert!(
                response.get("content").is_none(),
                "{what}: a 204 with a body"
            );
        } else if let Some((_, types)) = NON_JSON_SUCCESS.iter().find(|(p, _)| *p == path) {
            for t in *types {
                assert!(
                    response["content"][*t]["schema"].is_object(),
                    "{what}: {} has no {t} body",
                    ok[0]
                );
            }
        } else {
            assert!(
                response["content"]["application/json"]["schema"].is_object(),
                "{what}: {} has no JSON body",
                ok[0]
            );
        }
    }
    for path in [
        "/api/v1/bots/{name}/messages",
        "/api/v1/pools/{pool}/messages",
    ] {
        let content = &doc["paths"][path]["post"]["responses"]["200"]["content"];
        assert_eq!(
            content["application/json"]["schema"]["$ref"],
            schema_ref("AnswerView"),
            "{path}"
        );
        assert!(
            content["text/event-stream"].is_object(),
            "{path} has no event stream"
        );
    }
    assert_eq!(
        doc["paths"]["/api/v1/bots"]["post"]["responses"]["201"]["content"]["application/json"]
            ["schema"]["$ref"],
        schema_ref("BotView")
    );
    assert!(doc["paths"]["/api/v1/bots/{name}"]["delete"]["responses"]["204"].is_object());
}

/// Each `text/event-stream` answer describes its events (OpenAPI 3.1: the `schema` of a
/// sequential media type is one event's): the event names the handler sends, each with
/// `data` as JSON of the declared schema.
#[test]
fn event_streams_describe_each_event() {
    let doc = doc();
    let events = |path: &str, method: &str| -> Vec<(String, Value)> {
        let schema = &doc["paths"][path][method]["responses"]["200"]["content"]
            ["text/event-stream"]["schema"];
        let one_of = schema["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path}: no oneOf of events in {schema}"));
        one_of
            .iter()
            .map(|e| {
                assert_eq!(e["required"], serde_json::json!(["event", "data"]), "{e}");
                let names = e["properties"]["event"]["enum"].as_array().unwrap();
                assert_eq!(names.len(), 1, "{e}");
                let data = &e["properties"]["data"];
                assert_eq!(data["type"], "string", "{e}");
                assert_eq!(data["contentMediaType"], "application/json", "{e}");
                (
                    names[0].as_str().unwrap().to_owned(),
                    data["contentSchema"].clone(),
                )
            })
            .collect()
    };
    for path in [
        "/api/v1/bots/{name}/messages",
        "/api/v1/pools/{pool}/messages",
    ] {
        let e = events(path, "post");
        let names: Vec<_> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["token", "done", "error"], "{path}");
        assert_eq!(e[0].1["required"], serde_json::json!(["content"]), "{path}");
        assert_eq!(e[1].1["$ref"], schema_ref("AnswerView"), "{path}");
        assert_eq!(e[2].1["$ref"], schema_ref("ErrorBody"), "{path}");
    }
    for path in ["/api/v1/bots/{name}/logs", "/api/v1/logs"] {
        let e = events(path, "get");
        let names: Vec<_> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["log", "missed"], "{path}");
        assert_eq!(
            e[0].1["required"],
            serde_json::json!(["ts", "level", "msg"]),
            "{path}"
        );
        assert_eq!(e[1].1["required"], serde_json::json!(["missed"]), "{path}");
    }
}

#[test]
fn every_response_has_its_headers() {
    let doc = doc();
    for (path, method, op) in operations(&doc) {
        for (status, response) in responses(&op) {
            let what = format!("{method} {path} {status}");
            let headers = &response["headers"];
            assert!(
                headers["X-Request-Id"].is_object(),
                "{what}: no X-Request-Id"
            );
            let retry = headers.get("Retry-After").is_some();
            assert_eq!(
                retry,
                status == "429" || status == "503",
                "{what}: Retry-After {retry}"
            );
            if retry {
                assert_eq!(
                    headers["Retry-After"]["schema"]["type"], "integer",
                    "{what}"
                );
                assert_eq!(headers["Retry-After"]["schema"]["minimum"], 1, "{what}");
            }
        }
    }
}

/// Every `$ref` in `value`, with where it is.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push((at.to_owned(), r.to_owned()));
                    }
                } else {
                    refs(v, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_ref_resolves_to_a_component() {
    let doc = doc();
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    assert!(!found.is_empty());
    for (at, r) in &found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{at}: $ref {r} is not a schema component"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{at}: $ref {r} does not resolve"
        );
    }
    // And every component is used (a stale component hides a missing reference).
    let used: BTreeSet<&str> = found
        .iter()
        .filter_map(|(_, r)| r.strip_prefix("#/components/schemas/"))
        .collect();
    for name in doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
    {
        assert!(
            used.contains(name.as_str()),
            "component {name} is not referenced"
        );
    }
}

/// One route of docs/api.md's route list.
#[derive(Debug)]
struct DocRoute {
    method: String,
    path: String,
    query: BTreeSet<String>,
    /// `Some(None)`: no auth; `Some(Some(role))`: that role; `None`: not stated.
    role: Option<Option<String>>,
    line: usize,
}

/// The routes of the list items (`- \`GET /…\``) of docs/api.md, every route of a line.
fn doc_routes() -> Vec<DocRoute> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    let text = std::fs::read_to_string(file).expect("docs/api.md");
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("- `") else {
            continue;
        };
        if !methods.iter().any(|m| rest.starts_with(&format!("{m} /"))) {
            continue;
        }
        // Odd pieces are inside backticks; the piece after one is the text that follows it.
        let pieces: Vec<&str> = line.split('`').collect();
        for (j, code) in pieces.iter().enumerate().skip(1).step_by(2) {
            let Some((method, target)) = code.split_once(' ') else {
                continue;
            };
            if !methods.contains(&method) || !target.starts_with('/') {
                continue;
            }
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let query = query
                .split('&')
                .filter(|q| !q.is_empty())
                .map(|q| q.split('=').next().unwrap_or(q).to_owned())
                .collect();
            let after = pieces.get(j + 1).map(|s| s.trim_start()).unwrap_or("");
            let role = if after.starts_with("(no auth") {
                Some(None)
            } else {
                ["viewer", "operator", "admin"]
                    .iter()
                    .find(|r| after.starts_with(&format!("({r})")))
                    .map(|r| Some((*r).to_owned()))
            };
            out.push(DocRoute {
                method: method.to_owned(),
                path: path.to_owned(),
                query,
                role,
                line: i + 1,
            });
        }
    }
    out
}

/// Whether the skip entry `(m, p)` covers `method path`.
fn skips(&(m, p): &(&str, &str), method: &str, path: &str) -> bool {
    (m == "*" || m == method)
        && match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == p,
        }
}

fn not_built_yet(method: &str, path: &str) -> bool {
    NOT_BUILT_YET.iter().any(|e| skips(e, method, path))
}

#[test]
fn every_route_of_the_api_doc_is_in_the_document() {
    let doc = doc();
    let listed = doc_routes();
    assert!(
        listed.len() >= ROUTES.len(),
        "docs/api.md: found only {listed:?}"
    );
    let mut checked = BTreeSet::new();
    for r in &listed {
        if not_built_yet(&r.method, &r.path) {
            continue;
        }
        let what = format!("docs/api.md:{}: {} {}", r.line, r.method, r.path);
        let method = r.method.to_lowercase();
        let op = &doc["paths"][r.path.as_str()][method.as_str()];
        assert!(op.is_object(), "{what} is not in the OpenAPI document");
        checked.insert((r.path.clone(), method));
        let query = param_names(op, "query");
        for q in &r.query {
            assert!(
                query.contains(q),
                "{what}: query parameter {q} is not declared"
            );
        }
        // The role: as the line states it, else every GET of /api/v1 is the viewer's.
        let role = match &r.role {
            Some(role) => role.clone(),
            None if r.method == "GET" && r.path.starts_with("/api/v1/") => {
                Some("viewer".to_owned())
            }
            None => panic!("{what}: docs/api.md names no role"),
        };
        assert_eq!(
            op.get("x-botd-role").and_then(Value::as_str),
            role.as_deref(),
            "{what}: role"
        );
    }
    // And the other way: the document has no route the contract does not list.
    for r in ROUTES {
        let key = (r.path.to_owned(), r.method.to_owned());
        assert!(
            checked.contains(&key),
            "{} {} is not in docs/api.md's route list",
            r.method,
            r.path
        );
    }
}

#[test]
fn the_skip_list_only_names_routes_not_built() {
    let doc = doc();
    let listed = doc_routes();
    for entry @ (method, path) in NOT_BUILT_YET {
        let rows: Vec<&DocRoute> = listed
            .iter()
            .filter(|r| skips(entry, &r.method, &r.path))
            .collect();
        assert!(
            !rows.is_empty(),
            "{method} {path} is skipped but not in docs/api.md"
        );
        for r in rows {
            let built = doc["paths"][r.path.as_str()][r.method.to_lowercase().as_str()].is_object();
            assert!(
                !built,
                "{} {} is built now: drop it from NOT_BUILT_YET",
                r.method, r.path
            );
        }
    }
    // No listed route matches two entries (one of them would be stale).
    for r in &listed {
        let n = NOT_BUILT_YET
            .iter()
            .filter(|e| skips(e, &r.method, &r.path))
            .count();
        assert!(n <= 1, "{} {} matches {n} skip entries", r.method, r.path);
    }
}

/// Runs `filter` on one request, as the server does, and reads the whole answer.
async fn serve_one<F>(
    filter: F,
    method: &str,
    path: &str,
) -> (http::StatusCode, http::HeaderMap, Vec<u8>)
where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    use hyper::body::Body as _;
    use tower_service::Service as _;

    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .body(String::new())
        .unwrap();
    let mut service = warp::service(filter);
    let response = service.call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = futures::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame.expect("the body reads").into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    (parts.status, parts.headers, bytes)
}

#[tokio::test]
async fn the_route_serves_the_document_as_json() {
    let filter = botd::http::openapi::route();
    let (status, headers, body) = serve_one(filter.clone(), "GET", "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, botd::http::openapi::document_json().as_bytes());
    // Only GET, only that path.
    for (method, path) in [("POST", "/openapi.json"), ("GET", "/openapi.json/x")] {
        let (status, ..) = serve_one(filter.clone(), method, path).await;
        assert_ne!(status, 200, "{method} {path}");
    }
}
