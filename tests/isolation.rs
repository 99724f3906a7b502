//! Differential isolation: a seeded random walk of reads, writes, logouts and header tricks
//! through two cachegate instances sharing one Redis, in front of an origin that stamps into
//! every body exactly the inputs it used (identity, path, query, forwarding headers, varied
//! headers, data versions).
//!
//! After every answer the request a correct cachegate forwards is computed from the rules and
//! fetched directly from the origin; the two bodies must be byte-identical. A cached answer that
//! reaches a request the origin would have answered differently, or that predates a write, shows
//! up as a differing line. The run is sequential, so "after a write" is well defined.
//!
//! `ISOLATION_SEED=S` reproduces a run, `ISOLATION_REQUESTS=N` sets its length (the default is
//! short enough for every test run; 20,000 or more for a soak), and `ISOLATION_SHOW=n` prints
//! every failure of request `n` in full.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cachegate::secrets::Secrets;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use percent_encoding::percent_decode_str;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::{respond, BoxBody, Origin, Proxy, RedisServer, Resp, Seen};
use tokio::io::AsyncWriteExt;

const SECRET: &str = "isolation-jwt-secret";
const PURGE_TOKEN: &str = "isolation-purge-token";
const PREFIX: &str = "iso";
const DEFAULT_SEED: u64 = 0x0150_1A7E;
/// A debug build on two shared, busy cores manages 170 to 230 requests a second (each is a
/// proxied request plus a direct one to the origin), so the default run takes 22 to 30 s where
/// 20,000 took two minutes; every failure class the default seed finds in 20,000 requests shows
/// up within its first 2,200.
const DEFAULT_REQUESTS: usize = 5_000;
/// Marks a write whose client disconnects; the origin answers it late.
const SLOW_WRITE: &str = "x-slow-write";
const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

type HttpClient = Client<HttpConnector, Full<Bytes>>;
type Headers = Vec<(String, Vec<u8>)>;

// ---------------------------------------------------------------------------------------------
// The origin: a stamping app with its own session table and data versions.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Account {
    role: &'static str,
    tenant: Option<&'static str>,
    user: &'static str,
}

struct Row {
    who: Account,
    logged_out: bool,
    whoami_fails: bool,
}

/// The origin's state. Versions only move on writes, so a body's version shows whether it
/// predates one.
#[derive(Default)]
struct World {
    sessions: HashMap<String, Row>,
    course_tenant: BTreeMap<String, u64>,
    course_global: u64,
    lectures: HashMap<String, u64>,
    pages: HashMap<String, u64>,
    /// Writes that reached the origin through cachegate.
    writes: u64,
    /// Who the origin took the last write's author for.
    last_writer: String,
}

impl World {
    /// A tenant's answer depends on its own writes and tenant-less ones; a tenant-less answer may
    /// aggregate every tenant.
    fn course_version(&self, tenant: Option<&str>) -> u64 {
        match tenant {
            Some(t) => self.course_global + self.course_tenant.get(t).copied().unwrap_or(0),
            None => self.course_global + self.course_tenant.values().sum::<u64>(),
        }
    }
}

/// Request headers as a WSGI app sees them: names lower-cased with `_` read as `-`, so
/// `X_User_Role` is `HTTP_X_USER_ROLE` just like `X-User-Role`.
struct Wsgi(Vec<(String, Vec<u8>)>);

impl Wsgi {
    fn new(h: &HeaderMap) -> Self {
        Wsgi(
            h.iter()
                .map(|(k, v)| (k.as_str().to_ascii_lowercase().replace('_', "-"), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Django's cookie parsing: split on `;`, strip, the last duplicate wins.
    fn cookie(&self, name: &str) -> Option<String> {
        let mut found = None;
        for (_, v) in self.0.iter().filter(|(k, _)| k == "cookie") {
            for part in String::from_utf8_lossy(v).split(';') {
                let (n, val) = part.trim().split_once('=').unwrap_or(("", part.trim()));
                if n.trim() == name {
                    found = Some(val.trim().to_string());
                }
            }
        }
        found
    }

    fn forwarding(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .0
            .iter()
            .filter(|(k, _)| (k.starts_with("x-forwarded-") && k != "x-forwarded-for") || k == "forwarded")
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        out.sort();
        out
    }
}

#[derive(Debug, Clone, Default)]
struct Who {
    role: Option<String>,
    tenant: Option<String>,
    user: Option<String>,
}

fn claim(c: &Value, name: &str) -> Option<String> {
    match c.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The claims of a token the app accepts (HS256 with the shared secret, unexpired). The few
/// tokens of a run are verified once: signature checks in a debug build would dominate its time.
fn verify(token: &str) -> Option<Value> {
    static SEEN: OnceLock<Mutex<HashMap<String, Option<Value>>>> = OnceLock::new();
    let memo = SEEN.get_or_init(Default::default);
    if let Some(v) = memo.lock().unwrap().get(token) {
        return v.clone();
    }
    let claims = decode::<Value>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .ok()
    .map(|d| d.claims);
    memo.lock().unwrap().insert(token.to_string(), claims.clone());
    claims
}

/// Who the app thinks is asking: gateway headers, else a valid JWT, else its own session
/// table, else anonymous.
fn derive(w: &World, h: &Wsgi) -> Who {
    let (role, tenant) = (h.get("x-user-role"), h.get("x-org-id"));
    if role.is_some() || tenant.is_some() {
        return Who {
            role,
            tenant,
            user: None,
        };
    }
    if let Some(c) = h.get("authorization").as_deref().and_then(bearer).and_then(verify) {
        return Who {
            role: claim(&c, "role"),
            tenant: claim(&c, "org_id"),
            user: claim(&c, "sub"),
        };
    }
    if let Some(row) = session_row(w, h) {
        return Who {
            role: Some(row.who.role.to_string()),
            tenant: row.who.tenant.map(str::to_owned),
            user: Some(row.who.user.to_string()),
        };
    }
    Who {
        role: Some("anonymous".into()),
        ..Who::default()
    }
}

fn session_row<'a>(w: &'a World, h: &Wsgi) -> Option<&'a Row> {
    h.cookie("sessionid")
        .and_then(|s| w.sessions.get(&s))
        .filter(|r| !r.logged_out)
}

/// Who a page personalises for: a logged-in user (token or session), never a gateway header.
fn viewer(w: &World, h: &Wsgi) -> Option<String> {
    if let Some(c) = h.get("authorization").as_deref().and_then(bearer).and_then(verify) {
        return Some(claim(&c, "sub").unwrap_or_else(|| "?".into()));
    }
    session_row(w, h).map(|r| r.who.user.to_string())
}

fn form_decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Django's `QueryDict`: split on `&`, form-decode, values grouped per name in order.
fn django_query(raw: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.entry(form_decode(n)).or_default().push(form_decode(v));
    }
    m
}

fn lecture_id(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/lectures/")?.strip_suffix('/')?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

impl Who {
    fn line(&self) -> String {
        format!(
            "role={} tenant={} user={}",
            shown(self.role.as_deref()),
            shown(self.tenant.as_deref()),
            shown(self.user.as_deref())
        )
    }
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_string(), |s| format!("{s:?}"))
}

/// A body: one `name=value` line per input the app used.
#[derive(Default)]
struct Stamp(String);

impl Stamp {
    fn put(&mut self, k: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{k}={v}");
    }
}

fn bump(w: &mut World, path: &str, who: &Who) {
    if path.starts_with("/courses/") {
        match &who.tenant {
            Some(t) => *w.course_tenant.entry(t.clone()).or_default() += 1,
            None => w.course_global += 1,
        }
    } else if let Some(id) = lecture_id(path) {
        *w.lectures.entry(id.to_string()).or_default() += 1;
    } else {
        *w.pages.entry(path.to_string()).or_default() += 1;
    }
}

fn whoami(w: &World, h: &Wsgi) -> Response<BoxBody> {
    let Some(row) = h.cookie("sessionid").and_then(|s| w.sessions.get(&s)) else {
        return respond(401, &[], "{}");
    };
    if row.whoami_fails {
        return respond(500, &[], "whoami is broken for this session");
    }
    if row.logged_out {
        return respond(200, &[("content-type", "application/json")], "{}");
    }
    let body = json!({ "role": row.who.role, "tenant": row.who.tenant, "user": row.who.user });
    respond(200, &[("content-type", "application/json")], body.to_string())
}

fn answer(world: &Mutex<World>, r: &Seen) -> Response<BoxBody> {
    // Direct fetches by the oracle never change state.
    let oracle = r.headers.contains_key("x-oracle");
    let h = Wsgi::new(&r.headers);
    let path = percent_decode_str(&r.path).decode_utf8_lossy().into_owned();
    let mut w = world.lock().unwrap();
    if path == "/api/whoami/" {
        return whoami(&w, &h);
    }
    let who = derive(&w, &h);
    if r.method != Method::GET && r.method != Method::HEAD {
        if !oracle {
            w.writes += 1;
            w.last_writer = who.line();
            bump(&mut w, &path, &who);
        }
        return respond(200, &[("x-stamped", "1")], "written");
    }
    if path == "/logout/" {
        if let Some(row) = h.cookie("sessionid").and_then(|s| w.sessions.get_mut(&s)) {
            if !oracle {
                row.logged_out = true;
            }
        }
        return respond(
            200,
            &[("x-stamped", "1"), ("set-cookie", "sessionid=; Max-Age=0; Path=/")],
            "logged out",
        );
    }
    let query = django_query(r.query.as_deref());
    let mut s = Stamp::default();
    let mut headers = vec![("x-stamped", "1"), ("cache-control", "max-age=600")];
    if path == "/courses/" {
        s.put("route", "course_list");
        s.put("role", shown(who.role.as_deref()));
        s.put("tenant", shown(who.tenant.as_deref()));
        // The route keys on `page` only, so that is all the view reads.
        s.put("page", format!("{:?}", query.get("page").cloned().unwrap_or_default()));
        s.put("lang", shown(h.cookie("lang").as_deref()));
        s.put("version", w.course_version(who.tenant.as_deref()));
        headers.push(("vary", "Cookie"));
    } else if let Some(id) = lecture_id(&path) {
        s.put("route", "lecture");
        s.put("id", format!("{id:?}"));
        s.put("role", shown(who.role.as_deref()));
        s.put("query", format!("{query:?}"));
        s.put("version", w.lectures.get(id).copied().unwrap_or(0));
    } else if path == "/me/" {
        s.put("route", "me");
        s.put("user", shown(who.user.as_deref()));
        s.put("query", format!("{query:?}"));
    } else if path == "/public/" {
        s.put("route", "public");
        s.put("query", format!("{query:?}"));
    } else if path == "/stats/" {
        s.put("route", "stats");
        s.put("viewer", shown(viewer(&w, &h).as_deref()));
        s.put("query", format!("{query:?}"));
    } else {
        s.put("route", "page");
        s.put("role", shown(who.role.as_deref()));
        s.put("tenant", shown(who.tenant.as_deref()));
        s.put("accept-language", shown(h.get("accept-language").as_deref()));
        s.put("query", format!("{query:?}"));
        // Writes invalidate their own URL (RFC 9111 §4.4), which carries no query.
        let version = if query.is_empty() {
            w.pages.get(&path).copied().unwrap_or(0).to_string()
        } else {
            "-".into()
        };
        s.put("version", version);
        headers.push(("vary", "Accept-Language"));
    }
    s.put("path", format!("{path:?}"));
    s.put("host", shown(h.get("host").as_deref()));
    for (k, v) in h.forwarding() {
        s.put(&k, format!("{v:?}"));
    }
    respond(200, &headers, s.0)
}

// ---------------------------------------------------------------------------------------------
// Simulated clients.
// ---------------------------------------------------------------------------------------------

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value, key: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

#[derive(Debug, Clone)]
enum Cred {
    Anonymous,
    Jwt(String),
    /// A session slot: its cookie changes when the user logs out and back in.
    Session(usize),
    /// A cookie of a session that has logged out.
    StaleSession,
    Gateway(&'static str, Option<&'static str>),
}

struct Persona {
    name: &'static str,
    cred: Cred,
}

impl Persona {
    fn trusted(&self) -> bool {
        matches!(self.cred, Cred::Gateway(..))
    }
}

struct Slot {
    who: Account,
    sid: String,
    whoami_fails: bool,
}

fn personas() -> (Vec<Persona>, Vec<Slot>) {
    let exp = now() + 3600;
    let jwt = |name, c: Value| Persona {
        name,
        cred: Cred::Jwt(token(c, SECRET)),
    };
    let mut p = vec![
        Persona {
            name: "anonymous",
            cred: Cred::Anonymous,
        },
        jwt(
            "jwt teacher/1 ann",
            json!({"role": "teacher", "org_id": "1", "sub": "ann", "exp": exp}),
        ),
        jwt(
            "jwt student/1 bea",
            json!({"role": "student", "org_id": "1", "sub": "bea", "exp": exp}),
        ),
        jwt(
            "jwt teacher/2 cal",
            json!({"role": "teacher", "org_id": "2", "sub": "cal", "exp": exp}),
        ),
        jwt(
            "jwt admin/2 dee (numeric org_id)",
            json!({"role": "admin", "org_id": 2, "sub": "dee", "exp": exp}),
        ),
        jwt(
            "jwt teacher without org_id eve",
            json!({"role": "teacher", "sub": "eve", "exp": exp}),
        ),
        jwt(
            "jwt without role claim fay (org 1)",
            json!({"org_id": "1", "sub": "fay", "exp": exp}),
        ),
        jwt(
            "jwt expired teacher/1 ann",
            json!({"role": "teacher", "org_id": "1", "sub": "ann", "exp": now() - 3600}),
        ),
        Persona {
            name: "jwt with a bad signature admin/1",
            cred: Cred::Jwt(token(
                json!({"role": "admin", "org_id": "1", "sub": "mal", "exp": exp}),
                "not-the-secret",
            )),
        },
        jwt(
            "jwt teacher/3 u7",
            json!({"role": "teacher", "org_id": "3", "sub": "u7", "exp": exp}),
        ),
    ];
    let accounts = [
        ("teacher", Some("1"), "gil", false),
        ("teacher", Some("1"), "hal", false),
        ("student", Some("2"), "ivy", false),
        // The same user as a token holder: user values from different sources are one user.
        ("teacher", Some("3"), "u7", false),
        ("admin", Some("2"), "jon", false),
        ("teacher", Some("1"), "kim", true),
    ];
    let names = [
        "session teacher/1 gil",
        "session teacher/1 hal",
        "session student/2 ivy",
        "session teacher/3 u7",
        "session admin/2 jon",
        "session teacher/1 kim (whoami answers 500)",
    ];
    let mut slots = Vec::new();
    for (i, ((role, tenant, user, fails), name)) in accounts.into_iter().zip(names).enumerate() {
        slots.push(Slot {
            who: Account { role, tenant, user },
            sid: format!("s0-{user}"),
            whoami_fails: fails,
        });
        p.push(Persona {
            name,
            cred: Cred::Session(i),
        });
    }
    p.push(Persona {
        name: "logged-out session cookie",
        cred: Cred::StaleSession,
    });
    for (name, role, tenant) in [
        ("gateway teacher/1", "teacher", Some("1")),
        ("gateway student/2", "student", Some("2")),
        ("gateway admin (no tenant)", "admin", None),
        ("gateway teacher/3", "teacher", Some("3")),
    ] {
        p.push(Persona {
            name,
            cred: Cred::Gateway(role, tenant),
        });
    }
    (p, slots)
}

// ---------------------------------------------------------------------------------------------
// Requests and the model of what a correct cachegate forwards.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Read,
    Write,
    DisconnectedWrite,
    Logout,
}

struct Call {
    n: usize,
    instance: usize,
    persona: usize,
    action: Action,
    method: Method,
    target: String,
    headers: Headers,
    variants: Vec<&'static str>,
}

impl Call {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn describe(&self, personas: &[Persona]) -> String {
        let p = &personas[self.persona];
        let from = if p.trusted() {
            "127.0.0.2, trusted gateway"
        } else {
            "127.0.0.1, untrusted"
        };
        let mut s = format!(
            "#{} on instance {} as '{}' (from {from}), {:?}{}\n    {} {}\n",
            self.n,
            ["A", "B"][self.instance],
            p.name,
            self.action,
            if self.variants.is_empty() {
                String::new()
            } else {
                format!(", variants: {}", self.variants.join(", "))
            },
            self.method,
            self.target
        );
        for (k, v) in &self.headers {
            let mut v = v.escape_ascii().to_string();
            if v.len() > 40 && k.eq_ignore_ascii_case("authorization") {
                v.truncate(30);
                v.push('…');
            }
            let _ = writeln!(s, "    {k}: {v}");
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Courses,
    Lecture,
    Me,
    Public,
    Stats,
    Page,
}

impl Kind {
    fn of(path: &str) -> Kind {
        match path {
            "/courses/" => Kind::Courses,
            "/me/" => Kind::Me,
            "/public/" => Kind::Public,
            "/stats/" => Kind::Stats,
            p if p.starts_with("/lectures/") => Kind::Lecture,
            _ => Kind::Page,
        }
    }
    fn varies_role(self) -> bool {
        matches!(self, Kind::Courses | Kind::Lecture | Kind::Page)
    }
    fn varies_tenant(self) -> bool {
        matches!(self, Kind::Courses | Kind::Page)
    }
}

/// What a correct cachegate does with a request.
struct Model {
    /// `%2F` / `%5C` in the path: answered 400 by cachegate itself.
    refused: bool,
    /// The headers the origin must see (besides `Host`, `X-Forwarded-For` and `Via`).
    forwarded: Headers,
    /// Why the answer must not be a cache hit.
    never_hit: Option<&'static str>,
    /// Why the answer must be `BYPASS`.
    must_bypass: Option<&'static str>,
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

fn cookie_pairs(v: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(v)
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

fn model(call: &Call, trusted: bool, world: &World) -> Model {
    let lower = call.path().to_ascii_lowercase();
    let refused = lower.contains("%2f") || lower.contains("%5c");
    let named: Vec<String> = call
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|n| n.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut forwarded: Headers = Vec::new();
    let mut cookies = Vec::new();
    for (k, v) in &call.headers {
        let k = k.to_ascii_lowercase();
        let forwarding = k.starts_with("x-forwarded-") || k == "forwarded";
        let identity = k == "x-user-role" || k == "x-org-id";
        if HOP_BY_HOP.contains(&k.as_str())
            || named.contains(&k)
            || k.contains('_')
            || k == "host"
            || (!trusted && (forwarding || identity))
        {
            continue;
        }
        if k == "cookie" {
            cookies.extend(cookie_pairs(v));
        } else {
            forwarded.push((k, v.clone()));
        }
    }
    forwarded.retain(|(k, _)| k != "x-forwarded-proto");
    forwarded.push(("x-forwarded-proto".into(), b"http".to_vec()));
    let sessions: Vec<&str> = cookies.iter().filter_map(|c| c.strip_prefix("sessionid=")).collect();
    if !cookies.is_empty() {
        forwarded.push(("cookie".into(), cookies.join("; ").into_bytes()));
    }
    let get = |name: &str| forwarded.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let kind = Kind::of(call.path());
    let gateway_identity = trusted && (get("x-user-role").is_some() || get("x-org-id").is_some());
    let auth = get("authorization").map(|v| String::from_utf8_lossy(&v).into_owned());
    let mut never_hit = None;
    let mut must_bypass = None;
    if kind != Kind::Public {
        if sessions.len() > 1 {
            must_bypass = Some("duplicate session cookie");
        }
        if kind == Kind::Stats && (auth.is_some() || !sessions.is_empty()) {
            never_hit = Some("credentials on a vary = [] route that is not public");
        } else if !gateway_identity {
            if let Some(a) = &auth {
                match bearer(a).and_then(verify) {
                    None => never_hit = Some("invalid or expired JWT"),
                    Some(c) if claim(&c, "role").is_none() && kind.varies_role() => {
                        never_hit = Some("JWT without a role claim on a route varying on role")
                    }
                    Some(c) if claim(&c, "org_id").is_none() && kind.varies_tenant() => {
                        never_hit = Some("JWT without the tenant claim on a route varying on tenant")
                    }
                    Some(_) => {}
                }
            } else if let [sid] = sessions[..] {
                if world.sessions.get(sid).is_some_and(|r| r.whoami_fails) {
                    never_hit = Some("session whose lookup fails (whoami 500)");
                }
            }
        }
    }
    Model {
        refused,
        forwarded,
        never_hit,
        must_bypass,
    }
}

// ---------------------------------------------------------------------------------------------
// The random walk.
// ---------------------------------------------------------------------------------------------

struct Planner {
    rng: StdRng,
    personas: Vec<Persona>,
    slots: Vec<Slot>,
    logged_out: Vec<String>,
    logins: usize,
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    *items.choose(rng).unwrap()
}

impl Planner {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn plan(&mut self, n: usize) -> Call {
        let instance = self.rng.random_range(0..2);
        let persona = self.rng.random_range(0..self.personas.len());
        let session_persona = matches!(self.personas[persona].cred, Cred::Session(_));
        let roll: f64 = self.rng.random();
        let action = if roll < 0.07 {
            Action::Write
        } else if roll < 0.071 {
            Action::DisconnectedWrite
        } else if roll < 0.085 && session_persona {
            Action::Logout
        } else {
            Action::Read
        };
        let mut variants = Vec::new();
        let (method, target) = match action {
            Action::Read => self.read_target(&mut variants),
            Action::Logout => (Method::GET, "/logout/".to_string()),
            Action::Write | Action::DisconnectedWrite => self.write_target(action, &mut variants),
        };
        let headers = self.headers(persona, action, &mut variants);
        Call {
            n,
            instance,
            persona,
            action,
            method,
            target,
            headers,
            variants,
        }
    }

    fn read_target(&mut self, variants: &mut Vec<&'static str>) -> (Method, String) {
        let roll = self.rng.random_range(0..100);
        let id = self.rng.random_range(1..=3);
        let path = match roll {
            0..30 => "/courses/".to_string(),
            30..46 => format!("/lectures/{id}/"),
            46..48 => {
                variants.push("escaped digit in path");
                format!("/lectures/%3{id}/")
            }
            48..56 => "/me/".into(),
            56..63 => "/public/".into(),
            63..73 => "/stats/".into(),
            73..98 => format!("/pages/{id}/"),
            _ => {
                variants.push("encoded slash");
                pick(
                    &mut self.rng,
                    &[
                        "/lectures%2F1/",
                        "/lectures%2f2/",
                        "/lectures%5C1/",
                        "/pages%2F1/",
                        "/pages%5c2/",
                    ],
                )
                .to_string()
            }
        };
        let query = if path == "/courses/" {
            pick(
                &mut self.rng,
                &[
                    "",
                    "",
                    "?page=1",
                    "?page=2",
                    "?page=2&page=1",
                    "?page=1&page=2",
                    "?pa%67e=2",
                    "?page=%32",
                    "?page=2&utm_source=x",
                    "?utm_source=y",
                ],
            )
        } else if self.chance(0.3) {
            pick(
                &mut self.rng,
                &[
                    "?a=1&b=2", "?b=2&a=1", "?a=1&a=2", "?a=2&a=1", "?a", "?a=", "?x=+", "?x=%20", "?%61=1",
                ],
            )
        } else {
            ""
        };
        (Method::GET, format!("{path}{query}"))
    }

    fn write_target(&mut self, action: Action, variants: &mut Vec<&'static str>) -> (Method, String) {
        let id = self.rng.random_range(1..=3);
        let roll = self.rng.random_range(0..100);
        if action == Action::DisconnectedWrite {
            return match roll {
                0..60 => (Method::POST, "/courses/".into()),
                _ => (Method::POST, format!("/lectures/{id}/")),
            };
        }
        match roll {
            0..35 => (Method::POST, "/courses/".into()),
            35..50 => (Method::PUT, format!("/courses/{id}/")),
            50..58 => (Method::DELETE, format!("/courses/{id}/")),
            58..70 => (Method::POST, format!("/lectures/{id}/")),
            70..78 => (Method::PUT, format!("/lectures/{id}/")),
            78..95 => (Method::POST, format!("/pages/{id}/")),
            _ => {
                variants.push("encoded slash");
                (Method::POST, format!("/lectures%2F{id}/"))
            }
        }
    }

    fn headers(&mut self, persona: usize, action: Action, variants: &mut Vec<&'static str>) -> Headers {
        let mut h: Headers = Vec::new();
        let mut cookies: Vec<String> = Vec::new();
        let cred = self.personas[persona].cred.clone();
        let trusted = self.personas[persona].trusted();
        match cred {
            Cred::Anonymous => {}
            Cred::Jwt(t) => h.push(("Authorization".into(), format!("Bearer {t}").into_bytes())),
            Cred::Session(i) => cookies.push(format!("sessionid={}", self.slots[i].sid)),
            Cred::StaleSession => {
                let sid = self.logged_out.choose(&mut self.rng).unwrap().clone();
                cookies.push(format!("sessionid={sid}"));
            }
            Cred::Gateway(role, tenant) => {
                let mut role = role.as_bytes().to_vec();
                let mut tenant = tenant.map(|t| t.as_bytes().to_vec());
                if self.chance(0.12) {
                    let odd: &[u8] = pick(&mut self.rng, &[&b""[..], b"\"\"", "é".as_bytes()]);
                    if self.chance(0.5) {
                        variants.push("odd role value from the gateway");
                        role = odd.to_vec();
                    } else {
                        variants.push("odd tenant value from the gateway");
                        tenant = Some(odd.to_vec());
                    }
                }
                let role_name = pick(&mut self.rng, &["X-User-Role", "x-user-role", "X-USER-ROLE"]);
                h.push((role_name.into(), role));
                if let Some(t) = tenant {
                    h.push(("X-Org-Id".into(), t));
                }
                if self.chance(0.03) {
                    variants.push("underscore identity header from the gateway");
                    let (k, v) = pick(&mut self.rng, &[("X_Org_Id", "3"), ("X_User_Role", "admin")]);
                    h.push((k.into(), v.into()));
                }
            }
        }
        if !trusted && self.chance(0.07) {
            variants.push("forged identity header");
            let (k, v) = pick(
                &mut self.rng,
                &[
                    ("X-User-Role", "admin"),
                    ("x-USER-role", "teacher"),
                    ("X_User_Role", "admin"),
                    ("x_user_role", "teacher"),
                    ("X-Org-Id", "2"),
                    ("X_Org_Id", "2"),
                    ("x_org_id", "1"),
                    ("X-ORG-ID", "3"),
                ],
            );
            h.push((k.into(), v.into()));
        }
        if self.chance(0.05) {
            variants.push("Connection-listed header");
            let v = pick(
                &mut self.rng,
                &[
                    "Authorization",
                    "Cookie",
                    "Accept-Language",
                    "X-User-Role",
                    "X-Org-Id",
                    "keep-alive, authorization",
                ],
            );
            h.push(("Connection".into(), v.into()));
        }
        if self.chance(0.04) {
            variants.push("duplicate session cookie");
            let mut all: Vec<String> = self.slots.iter().map(|s| s.sid.clone()).collect();
            all.extend(self.logged_out.iter().cloned());
            let other = format!("sessionid={}", all.choose(&mut self.rng).unwrap());
            if cookies.is_empty() {
                cookies.push(format!("sessionid={}", all.choose(&mut self.rng).unwrap()));
            }
            if self.chance(0.5) {
                cookies.push(other);
            } else {
                cookies.insert(0, other);
            }
        }
        if self.chance(0.12) {
            variants.push("lang cookie");
            let lang = pick(&mut self.rng, &["lang=fr", "lang=de"]);
            cookies.push(lang.into());
        }
        if self.chance(0.3) {
            let v = pick(&mut self.rng, &["en", "fr", "de-DE,de;q=0.9"]);
            h.push(("Accept-Language".into(), v.into()));
        }
        if !trusted && action != Action::DisconnectedWrite && self.chance(0.04) {
            variants.push("foreign Host");
            h.push(("Host".into(), b"evil.example".to_vec()));
        }
        if !trusted && self.chance(0.06) {
            variants.push("forwarding header from a client");
            let (k, v) = pick(
                &mut self.rng,
                &[
                    ("X-Forwarded-Host", "evil.example"),
                    ("Forwarded", "host=evil.example;proto=https"),
                    ("X-Forwarded-Prefix", "/evil"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Port", "8443"),
                ],
            );
            h.push((k.into(), v.into()));
        }
        if !cookies.is_empty() {
            h.push(("Cookie".into(), cookies.join("; ").into_bytes()));
        }
        h
    }

    /// Sessions the origin logged out are replaced by a fresh login (a new cookie), and their
    /// old cookie joins the ones a careless client may still send.
    fn relogin(&mut self, world: &Mutex<World>) {
        let mut w = world.lock().unwrap();
        for slot in &mut self.slots {
            if w.sessions.get(&slot.sid).is_some_and(|r| r.logged_out) {
                self.logins += 1;
                self.logged_out.push(slot.sid.clone());
                slot.sid = format!("s{}-{}", self.logins, slot.who.user);
                w.sessions.insert(
                    slot.sid.clone(),
                    Row {
                        who: slot.who.clone(),
                        logged_out: false,
                        whoami_fails: slot.whoami_fails,
                    },
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking.
// ---------------------------------------------------------------------------------------------

async fn fetch(
    client: &HttpClient,
    addr: SocketAddr,
    method: &Method,
    target: &str,
    headers: &Headers,
) -> Result<Resp, String> {
    let mut b = Request::builder()
        .method(method.clone())
        .uri(format!("http://{addr}{target}"));
    for (k, v) in headers {
        b = b.header(
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
            HeaderValue::from_bytes(v).map_err(|e| e.to_string())?,
        );
    }
    let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn lines(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The stamped inputs that differ between two bodies.
fn differing(served: &[u8], expected: &[u8]) -> Vec<String> {
    let (a, b) = (lines(served), lines(expected));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

/// Failure classes named after what went wrong, from the stamped inputs that differ.
fn classes(diff: &[String], cached: bool, route: Kind) -> Vec<String> {
    let has = |names: &[&str]| diff.iter().any(|d| names.contains(&d.as_str()));
    let identity = has(&["role", "tenant", "user", "viewer"]);
    let path = has(&["path", "id", "route"]);
    let query = has(&["query", "page"]);
    let vary = has(&["lang", "accept-language"]);
    let forwarding: Vec<&String> = diff
        .iter()
        .filter(|d| *d == "host" || *d == "forwarded" || d.starts_with("x-forwarded-"))
        .collect();
    let mut out = Vec::new();
    let (c, f) = ("cached answer crossed", "forwarded request differs from the rules in");
    if identity {
        out.push(if cached {
            format!("{c} identities ({route:?})")
        } else {
            format!("{f} identity ({route:?})")
        });
    }
    if path {
        out.push(if cached {
            format!("{c} paths")
        } else {
            format!("{f} path")
        });
    }
    if query {
        out.push(if cached {
            format!("{c} query variants")
        } else {
            format!("{f} query")
        });
    }
    if vary {
        out.push(if cached {
            format!("{c} Accept-Language / lang cookie variants")
        } else {
            format!("{f} Accept-Language / cookies")
        });
    }
    for header in forwarding {
        out.push(if cached {
            format!("{c} variants of the {header} header")
        } else {
            format!("{f} the {header} header")
        });
    }
    if !identity && !path && !query && !vary && has(&["version"]) {
        out.push(if cached {
            "stale cached answer: predates a write or logout".to_string()
        } else {
            "forwarded answer shows another version".to_string()
        });
    }
    if out.is_empty() {
        out.push("body differs".into());
    }
    out
}

/// One class of failures: how often, the first occurrence in full, and the requests (persona,
/// variants, and for cached answers those of the request that filled the entry) it came from.
struct Class {
    count: usize,
    first: String,
    causes: BTreeMap<String, (usize, usize)>,
}

#[derive(Default)]
struct Report {
    failures: BTreeMap<String, Class>,
    /// Per instance: answers by `X-Cache` (and tier for hits).
    answers: [BTreeMap<String, usize>; 2],
    reads: usize,
    writes: usize,
    disconnected: usize,
    disconnected_unforwarded: usize,
    logouts: usize,
    refused: usize,
    oracle: usize,
    t_send: Duration,
    t_oracle: Duration,
}

fn indent(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s = String::new();
    for l in text.lines() {
        let _ = writeln!(s, "        {l}");
    }
    s
}

fn answer_line(r: &Resp) -> String {
    format!(
        "{} X-Cache: {} | Cache-Status: {} | tier: {} | key: {}",
        r.status,
        r.x_cache(),
        r.header("cache-status"),
        r.header("x-cache-tier"),
        r.header("x-cache-key")
    )
}

struct Run {
    seed: u64,
    proxies: [Proxy; 2],
    origin: Origin,
    world: Arc<Mutex<World>>,
    public: HttpClient,
    gateway: HttpClient,
    oracle: HttpClient,
    redis: redis::aio::MultiplexedConnection,
    report: Report,
    /// Who last filled each key, so a bad hit names the request that stored it.
    fills: HashMap<String, usize>,
    /// Requests that changed the origin's state (writes, logouts), in order.
    changes: Vec<usize>,
    described: Vec<String>,
    /// Per request: its persona and variants, to group failures by what caused them.
    causes: Vec<String>,
    /// `ISOLATION_SHOW=n`: print every failure of request `n` in full.
    show: Option<usize>,
}

impl Run {
    fn context(&self, call: &Call) -> String {
        format!(
            "seed={} (ISOLATION_SEED={} ISOLATION_REQUESTS={} reproduces it)\n  {}",
            self.seed,
            self.seed,
            call.n + 1,
            self.described[call.n]
        )
    }

    fn fail(&mut self, call: &Call, filler: Option<usize>, class: String, text: impl FnOnce() -> String) {
        let mut cause = self.causes[call.n].clone();
        if let Some(f) = filler {
            let _ = write!(cause, " <- entry filled by {}", self.causes[f]);
        }
        let show = self.show == Some(call.n);
        let known = self.report.failures.contains_key(&class);
        let text = (!known || show).then(text);
        if let (true, Some(t)) = (show, &text) {
            eprintln!("==== #{} {class}:\n  {t}", call.n);
        }
        let e = self.report.failures.entry(class).or_insert_with(|| Class {
            count: 0,
            first: text.unwrap_or_default(),
            causes: BTreeMap::new(),
        });
        e.count += 1;
        e.causes.entry(cause).or_insert((0, call.n)).0 += 1;
    }

    /// The state changes since request `n`, most recent last (at most four).
    fn changes_since(&self, n: usize) -> String {
        let later: Vec<usize> = self.changes.iter().copied().filter(|c| *c > n).collect();
        let mut s = format!("  {} state change(s) since the fill", later.len());
        if later.len() > 4 {
            s.push_str(", the last four");
        }
        s.push_str(":\n");
        for c in later.iter().skip(later.len().saturating_sub(4)) {
            let _ = write!(s, "  {}", self.described[*c]);
        }
        s
    }

    /// Purges everything, so that after a failure that left stale entries behind the next
    /// requests test their own rules.
    async fn resync(&self) {
        let r = self.proxies[0]
            .admin_req(Method::POST, "/purge")
            .header("authorization", &format!("Bearer {PURGE_TOKEN}"))
            .body(json!({ "all": true }).to_string())
            .send()
            .await;
        assert_eq!(r.status, 200, "webhook purge: {}", r.text());
    }

    async fn step(&mut self, planner: &mut Planner, call: Call) {
        if call.action != Action::Read {
            self.changes.push(call.n);
        }
        let trusted = planner.personas[call.persona].trusted();
        let m = {
            let w = self.world.lock().unwrap();
            model(&call, trusted, &w)
        };
        match call.action {
            Action::Read => self.read(&call, &m, trusted).await,
            Action::Write => self.write(&call, &m, trusted).await,
            Action::DisconnectedWrite => self.disconnected_write(&call, trusted).await,
            Action::Logout => {
                self.logout(&call, trusted).await;
                planner.relogin(&self.world);
            }
        }
    }

    async fn send(&self, call: &Call, trusted: bool) -> Result<Resp, String> {
        let client = if trusted { &self.gateway } else { &self.public };
        fetch(
            client,
            self.proxies[call.instance].addr,
            &call.method,
            &call.target,
            &call.headers,
        )
        .await
    }

    async fn read(&mut self, call: &Call, m: &Model, trusted: bool) {
        self.report.reads += 1;
        let t0 = Instant::now();
        let sent = self.send(call, trusted).await;
        self.report.t_send += t0.elapsed();
        let served = match sent {
            Ok(r) => r,
            Err(e) => {
                let ctx = self.context(call);
                self.fail(call, None, "transport error".into(), || format!("{ctx}  error: {e}\n"));
                return;
            }
        };
        let x_cache = served.x_cache();
        let tally = match (x_cache.as_str(), served.header("x-cache-tier").as_str()) {
            ("HIT" | "STALE", tier) => format!("{x_cache}/{tier}"),
            (x, _) => x.to_string(),
        };
        *self.report.answers[call.instance].entry(tally).or_default() += 1;
        if m.refused {
            self.report.refused += 1;
            if served.status != 400 || served.headers.contains_key("x-stamped") {
                let ctx = self.context(call);
                self.fail(
                    call,
                    None,
                    "encoded slash/backslash path not refused with 400".into(),
                    || {
                        format!(
                            "{ctx}  served: {}\n{}  expected: 400 from cachegate itself, nothing forwarded\n",
                            answer_line(&served),
                            indent(&served.body)
                        )
                    },
                );
            }
            return;
        }
        let key = served.header("x-cache-key");
        if x_cache == "MISS" && served.header("cache-status").contains("stored") {
            self.fills.insert(key.clone(), call.n);
        }
        let mut oracle_headers = m.forwarded.clone();
        oracle_headers.push(("x-oracle".into(), b"1".to_vec()));
        self.report.oracle += 1;
        let t0 = Instant::now();
        let fetched = fetch(
            &self.oracle,
            self.origin.addr,
            &call.method,
            &call.target,
            &oracle_headers,
        )
        .await;
        self.report.t_oracle += t0.elapsed();
        let expected = match fetched {
            Ok(r) => r,
            Err(e) => panic!("the origin did not answer the oracle: {e}"),
        };
        let cached = x_cache == "HIT" || x_cache == "STALE";
        let filler = self.fills.get(&key).copied().filter(|_| cached);
        let filled_by = match filler {
            Some(n) => format!("  the entry was filled by\n  {}", self.described[n]),
            None => String::new(),
        };
        let ctx = self.context(call);
        let detail = |served: &Resp, expected: &Resp, diff: &str| {
            format!(
                "{ctx}  served:   {}\n{}  expected: {} (origin, direct)\n{}  differing: {diff}\n{filled_by}",
                answer_line(served),
                indent(&served.body),
                expected.status,
                indent(&expected.body)
            )
        };
        if served.status != expected.status {
            self.fail(
                call,
                None,
                format!("status differs ({} instead of {})", served.status, expected.status),
                || detail(&served, &expected, "status"),
            );
        } else if served.body != expected.body {
            let diff = differing(&served.body, &expected.body);
            let mut what = diff.join(", ");
            if let (Some(n), true) = (filler, diff.iter().any(|d| d == "version")) {
                what.push('\n');
                what.push_str(&self.changes_since(n));
            }
            for class in classes(&diff, cached, Kind::of(call.path())) {
                self.fail(call, filler, class, || detail(&served, &expected, &what));
            }
        }
        if let Some(why) = m.never_hit.filter(|_| cached) {
            self.fail(call, filler, format!("served from cache although {why}"), || {
                detail(&served, &expected, "X-Cache")
            });
        }
        if let Some(why) = m.must_bypass.filter(|_| x_cache != "BYPASS") {
            self.fail(call, None, format!("{why} not answered BYPASS"), || {
                detail(&served, &expected, "X-Cache")
            });
        }
    }

    fn writes_seen(&self) -> u64 {
        self.world.lock().unwrap().writes
    }

    async fn write(&mut self, call: &Call, m: &Model, trusted: bool) {
        self.report.writes += 1;
        let before = self.writes_seen();
        let resp = self.send(call, trusted).await;
        let applied = self.writes_seen() - before;
        let ctx = self.context(call);
        let (status, line) = match &resp {
            Ok(r) => (r.status.as_u16(), answer_line(r)),
            Err(e) => (0, e.clone()),
        };
        let failure = if m.refused {
            self.report.refused += 1;
            (status != 400 || applied != 0).then(|| {
                (
                    "write to an encoded slash path not refused with 400".to_string(),
                    format!(
                        "{ctx}  answered: {line}\n  the origin applied {applied} write(s); expected 400 and none\n"
                    ),
                )
            })
        } else if status != 200 || applied != 1 {
            Some((
                "write not forwarded exactly once".to_string(),
                format!("{ctx}  answered: {line}\n  the origin applied {applied} write(s)\n"),
            ))
        } else {
            let (saw, expected) = self.writer(m);
            (saw != expected).then(|| {
                (
                    "write reached the origin as another author than the rules allow".to_string(),
                    format!("{ctx}  answered: {line}\n  the origin took the author for {saw}\n  the rules give       {expected}\n"),
                )
            })
        };
        if let Some((class, text)) = failure {
            self.fail(call, None, class, || text);
            // The origin's data moved in a way no purge followed: start clean.
            self.resync().await;
        }
    }

    /// Who the origin took the last write's author for, and who it takes the author of the
    /// request the rules forward for.
    fn writer(&self, m: &Model) -> (String, String) {
        let mut h = HeaderMap::new();
        for (k, v) in &m.forwarded {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let w = self.world.lock().unwrap();
        (w.last_writer.clone(), derive(&w, &Wsgi::new(&h)).line())
    }

    async fn logout(&mut self, call: &Call, trusted: bool) {
        self.report.logouts += 1;
        let ctx = self.context(call);
        match self.send(call, trusted).await {
            Ok(r) if r.status == 200 && r.x_cache() != "HIT" && r.x_cache() != "STALE" => {}
            Ok(r) => self.fail(call, None, "logout answered from cache or failed".into(), || {
                format!("{ctx}  answered: {}\n", answer_line(&r))
            }),
            Err(e) => self.fail(call, None, "transport error".into(), || format!("{ctx}  error: {e}\n")),
        }
    }

    async fn metric(&self, instance: usize, name: &str, label: &str) -> f64 {
        let text = self.proxies[instance].admin_get("/metrics").send().await.text();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Purges Redis has recorded (`{prefix}` in braces, then `:_epoch`).
    async fn epoch(&self) -> i64 {
        let mut c = self.redis.clone();
        redis::cmd("GET")
            .arg(format!("{{{PREFIX}}}:_epoch"))
            .query_async::<Option<i64>>(&mut c)
            .await
            .unwrap_or_default()
            .unwrap_or(0)
    }

    /// A write whose client goes away without reading the answer, once the origin has applied
    /// it (cachegate is then waiting for the origin's late answer). Before the next request the
    /// purge must be complete: the instance counted a write purge, Redis recorded it, and a
    /// webhook purge sent after it (answered once every instance acknowledged it, and
    /// acknowledgements come in order) has been answered.
    async fn disconnected_write(&mut self, call: &Call, trusted: bool) {
        const CLASS: &str = "write not purged after its client disconnected";
        self.report.disconnected += 1;
        let i = call.instance;
        let (writes, purges, epoch) = (
            self.writes_seen(),
            self.metric(i, "cachegate_purges_total", "trigger=\"write\"").await,
            self.epoch().await,
        );
        let addr = self.proxies[i].addr;
        let mut raw = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{SLOW_WRITE}: 1\r\n",
            call.method, call.target
        )
        .into_bytes();
        for (k, v) in &call.headers {
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(v);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if trusted {
            socket.bind(SocketAddr::new(GATEWAY, 0)).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        stream.write_all(&raw).await.unwrap();
        let applied = poll(Duration::from_secs(3), || async { self.writes_seen() > writes }).await;
        drop(stream);
        let ctx = self.context(call);
        if !applied {
            self.fail(
                call,
                None,
                "disconnecting write never reached the origin".into(),
                || format!("{ctx}  the origin saw no write within 3s\n"),
            );
            return;
        }
        // A correct purge lands within milliseconds; once this is known to fail, waiting long
        // for it again only slows the run down.
        let patience = if self.report.failures.contains_key(CLASS) {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(2)
        };
        let purged = poll(patience, || async {
            self.metric(i, "cachegate_purges_total", "trigger=\"write\"").await > purges
        })
        .await;
        let recorded = purged && poll(patience, || async { self.epoch().await > epoch }).await;
        if !(purged && recorded) {
            self.fail(call, None, CLASS.into(), || {
                format!(
                    "{ctx}  the origin applied the write and the client left; write purge counted: {purged}, recorded in Redis: {recorded} (waited {patience:?})\n"
                )
            });
            self.resync().await;
            return;
        }
        let r = self.proxies[i]
            .admin_req(Method::POST, "/purge")
            .header("authorization", &format!("Bearer {PURGE_TOKEN}"))
            .body(json!({ "tags": ["isolation-barrier"] }).to_string())
            .send()
            .await;
        assert_eq!(r.status, 200, "webhook purge: {}", r.text());
    }
}

/// Polls `f` every 5 ms until it holds or `deadline` passes.
async fn poll<F: std::future::Future<Output = bool>>(deadline: Duration, mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config(origin: &Origin, redis: &RedisServer) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
debug_headers = true

[origin]
url = "{origin}"
timeout = "5s"

[cache]
redis_url = "{redis}"
key_prefix = "{PREFIX}"
stale_while_revalidate = "0s"
stale_if_error = "0s"
fill_lease = "0s"

[identity]
role_header = "X-User-Role"
tenant_header = "X-Org-Id"
trust_headers_from = ["127.0.0.2/32"]
user_header = "X-User-Id"
credential_cookies = ["sessionid"]
jwt = {{ header = "Authorization", secret_env = "ISOLATION_JWT_SECRET", algorithms = ["HS256"], role_claim = "role", tenant_claim = "org_id", user_claim = "sub" }}
lookup = {{ path = "/api/whoami/", cookie = "sessionid", ttl = "60s", reset_paths = ["/logout/"] }}

[purge]
token_env = "ISOLATION_PURGE_TOKEN"

[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
vary = ["role", "tenant"]
query = {{ include = ["page"] }}
tags = ["courses"]

[[route]]
name = "lecture"
path = "/lectures/{{id}}/"
ttl = "10m"
vary = ["role"]
tags = ["lecture:{{id}}"]

[[route]]
name = "me"
path = "/me/"
ttl = "10m"
vary = ["user"]

[[route]]
name = "public_page"
path = "/public/"
ttl = "10m"
vary = []
public = true

[[route]]
name = "stats"
path = "/stats/"
ttl = "10m"
vary = []

[[route]]
name = "default"
path = "/{{*any}}"
ttl = "origin"

[[invalidate]]
methods = ["POST", "PUT", "PATCH", "DELETE"]
path = "/courses/{{*rest}}"
tags = ["courses"]
scope = "tenant"

[[invalidate]]
path = "/lectures/{{id}}/"
tags = ["lecture:{{id}}"]
"#,
        origin = origin.url(),
        redis = redis.url()
    )
}

fn plain_client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_isolation() {
    let seed: u64 = env_or("ISOLATION_SEED", DEFAULT_SEED);
    let requests: usize = env_or("ISOLATION_REQUESTS", DEFAULT_REQUESTS);
    eprintln!("differential isolation: seed={seed} requests={requests}");
    let started = Instant::now();

    let (personas, slots) = personas();
    let world = Arc::new(Mutex::new(World::default()));
    {
        let mut w = world.lock().unwrap();
        for s in &slots {
            w.sessions.insert(
                s.sid.clone(),
                Row {
                    who: s.who.clone(),
                    logged_out: false,
                    whoami_fails: s.whoami_fails,
                },
            );
        }
        w.sessions.insert(
            "s0-gone".into(),
            Row {
                who: Account {
                    role: "admin",
                    tenant: Some("1"),
                    user: "old",
                },
                logged_out: true,
                whoami_fails: false,
            },
        );
    }
    let w2 = world.clone();
    let origin = Origin::start_async(move |r| {
        let resp = answer(&w2, &r);
        // Holds the answer back so that a disconnecting writer leaves while cachegate waits.
        let slow = r.headers.contains_key(SLOW_WRITE);
        async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            resp
        }
    })
    .await;
    let redis_server = RedisServer::start().await;
    let text = config(&origin, &redis_server);
    let secrets = Secrets {
        jwt_secret: Some(SECRET.into()),
        purge_token: Some(PURGE_TOKEN.into()),
        ..Default::default()
    };
    let a = Proxy::from_text_with(&text, secrets.clone()).await;
    let b = Proxy::from_text_with(&text, secrets).await;
    a.wait_shared().await;
    b.wait_shared().await;

    let gateway = support::client_from(GATEWAY);
    let mut run = Run {
        seed,
        proxies: [a, b],
        world: world.clone(),
        public: plain_client(),
        gateway,
        oracle: plain_client(),
        redis: redis_server.conn().await.unwrap(),
        origin,
        report: Report::default(),
        fills: HashMap::new(),
        changes: Vec::new(),
        causes: Vec::with_capacity(requests),
        show: std::env::var("ISOLATION_SHOW").ok().and_then(|v| v.parse().ok()),
        described: Vec::with_capacity(requests),
    };

    // The gateway really connects from its own address, or nothing it sends would be trusted.
    let probe = fetch(
        &run.gateway,
        run.proxies[0].addr,
        &Method::GET,
        "/api/whoami/",
        &Vec::new(),
    )
    .await
    .expect("gateway client reaches cachegate");
    assert_eq!(probe.status, 401, "{}", probe.text());
    let seen = run.origin.last();
    assert!(
        support::header(&seen.headers, "x-forwarded-for").ends_with("127.0.0.2"),
        "the gateway client must connect from 127.0.0.2: {:?}",
        seen.headers.get("x-forwarded-for")
    );

    // The disconnected-write barrier reads the purge count Redis keeps; make sure it is there.
    let epoch = run.epoch().await;
    let headers: Headers = vec![
        ("X-User-Role".into(), b"teacher".to_vec()),
        ("X-Org-Id".into(), b"1".to_vec()),
    ];
    let w = fetch(&run.gateway, run.proxies[0].addr, &Method::POST, "/courses/", &headers)
        .await
        .expect("a write through cachegate");
    assert_eq!(w.status, 200, "{}", w.text());
    assert!(
        run.epoch().await > epoch,
        "a write purge must move {PREFIX}:_epoch in Redis (the disconnected-write checks rely on it)"
    );

    let mut planner = Planner {
        rng: StdRng::seed_from_u64(seed),
        personas,
        slots,
        logged_out: vec!["s0-gone".into()],
        logins: 0,
    };
    for n in 0..requests {
        let call = planner.plan(n);
        run.described.push(call.describe(&planner.personas));
        run.causes.push(format!(
            "'{}' [{}]",
            planner.personas[call.persona].name,
            call.variants.join(", ")
        ));
        run.step(&mut planner, call).await;
    }
    let elapsed = started.elapsed();

    let r = &run.report;
    let mut summary = format!(
        "differential isolation: seed={seed}, {requests} requests in {:.1}s: {} reads ({} checked against the origin), {} writes, {} disconnected writes ({} never reached the origin), {} logouts, {} refused (400 expected)\n",
        elapsed.as_secs_f64(),
        r.reads,
        r.oracle,
        r.writes,
        r.disconnected,
        r.disconnected_unforwarded,
        r.logouts,
        r.refused
    );
    for (i, answers) in r.answers.iter().enumerate() {
        let parts: Vec<String> = answers.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(summary, "  instance {}: {}", ["A", "B"][i], parts.join(", "));
    }
    let _ = writeln!(
        summary,
        "  time waiting on cachegate {:.1}s, on direct origin fetches {:.1}s",
        r.t_send.as_secs_f64(),
        r.t_oracle.as_secs_f64()
    );
    eprintln!("{summary}");
    if r.failures.is_empty() {
        return;
    }
    let mut text = format!("{} failure classes (seed={seed}):\n", r.failures.len());
    for (name, class) in &r.failures {
        let _ = writeln!(text, "  {:>6} × {name}", class.count);
    }
    for (name, class) in &r.failures {
        eprintln!("==== {name} ({} times); first:\n  {}", class.count, class.first);
        let mut causes: Vec<_> = class.causes.iter().collect();
        causes.sort_by_key(|(_, (count, first))| (std::cmp::Reverse(*count), *first));
        eprintln!("  by request kind (ISOLATION_SHOW=n prints request n in full):");
        for (cause, (count, first)) in causes.iter().take(12) {
            eprintln!("    {count:>5} × {cause}, first #{first}");
        }
        if causes.len() > 12 {
            eprintln!("    … and {} more kinds", causes.len() - 12);
        }
        eprintln!();
    }
    eprintln!("{text}");
    panic!("{text}");
}

/// The model on its own: hop-by-hop and `Connection`-listed headers go first, `_` names go for
/// everyone, identity and forwarding headers only for untrusted peers, and cookies are re-joined.
#[test]
fn model_forwards_what_the_rules_allow() {
    let headers: Headers = [
        ("Connection", "Authorization"),
        ("Authorization", "Bearer x"),
        ("X_User_Role", "admin"),
        ("X-Org-Id", "2"),
        ("X-Forwarded-Host", "evil.example"),
        ("Host", "evil.example"),
        ("Cookie", "sessionid=a;  lang=fr ;sessionid=b"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    let call = |target: &str| Call {
        n: 0,
        instance: 0,
        persona: 0,
        action: Action::Read,
        method: Method::GET,
        target: target.into(),
        headers: headers.clone(),
        variants: Vec::new(),
    };
    let shown = |m: &Model| {
        m.forwarded
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
    };
    let world = World::default();
    let untrusted = model(&call("/courses/?page=2"), false, &world);
    assert!(!untrusted.refused);
    assert_eq!(
        shown(&untrusted),
        ["x-forwarded-proto: http", "cookie: sessionid=a; lang=fr; sessionid=b"]
    );
    assert_eq!(untrusted.must_bypass, Some("duplicate session cookie"));
    let trusted = model(&call("/courses/"), true, &world);
    assert_eq!(
        shown(&trusted),
        [
            "x-org-id: 2",
            "x-forwarded-host: evil.example",
            "x-forwarded-proto: http",
            "cookie: sessionid=a; lang=fr; sessionid=b"
        ]
    );
    assert!(model(&call("/lectures%2f1/"), false, &world).refused);
    assert!(model(&call("/lectures%5C1/"), false, &world).refused);
}
