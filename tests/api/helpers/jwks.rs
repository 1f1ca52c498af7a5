//! A stand-in for Google's key set (`GOOGLE_JWKS_URL`): an HTTP/1 server on a
//! thread of its own that publishes the RSA keys a test chooses, with the
//! `Cache-Control: max-age` it chooses, and counts how often it is fetched; and
//! the keys themselves, which sign ID tokens as Google does (RS256, `kid`).

// Test support: not every accessor is used by every test.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// An RSA key that signs ID tokens, published under `kid`.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: &str) -> Self {
        let key = rsa::PrivateKey::new(&mut rand::rng(), 2048).expect("RSA key");
        let der = key.to_pkcs1_der().expect("PKCS#1 DER");
        let jwk = json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(key.n_bytes()),
            "e": URL_SAFE_NO_PAD.encode(key.e_bytes()),
        });
        Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk,
        }
    }

    /// The `n`-th of the keys this test process made (`key-0`, `key-1`, …); made once,
    /// since making one takes a moment.
    pub fn nth(n: usize) -> &'static SigningKey {
        static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
        &KEYS.get_or_init(|| {
            (0..3)
                .map(|i| Self::generate(&format!("key-{i}")))
                .collect()
        })[n]
    }

    /// `claims` signed with this key, its header naming it.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// `claims` signed with this key, the header naming `kid` instead.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

struct Published {
    keys: Vec<Value>,
    max_age: u64,
}

struct Inner {
    published: Mutex<Published>,
    fetches: AtomicUsize,
}

/// The key set server; stops when dropped.
pub struct FakeJwks {
    pub url: String,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeJwks {
    /// Publishes `keys`, to be kept `max_age` seconds.
    pub fn start(keys: &[&SigningKey], max_age: u64) -> Self {
        let inner = Arc::new(Inner {
            published: Mutex::new(Published {
                keys: keys.iter().map(|k| k.jwk.clone()).collect(),
                max_age,
            }),
            fetches: AtomicUsize::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!(
            "http://{}/oauth2/v3/certs",
            listener.local_addr().expect("addr")
        );
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let served = inner.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(serve(served, listener, stopped));
        });
        Self {
            url,
            inner,
            stop: Some(stop),
        }
    }

    /// Publishes `keys` instead (a rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        self.inner.published.lock().unwrap().keys = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.inner.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for FakeJwks {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    inner: Arc<Inner>,
    listener: std::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(inner.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn answer(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::GET || req.uri().path() != "/oauth2/v3/certs" {
        return Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let (body, max_age) = {
        let published = inner.published.lock().unwrap();
        (json!({ "keys": published.keys }), published.max_age)
    };
    inner.fetches.fetch_add(1, Ordering::SeqCst);
    Ok(Response::builder()
        .header("content-type", "application/json; charset=UTF-8")
        .header(
            "cache-control",
            format!("public, max-age={max_age}, must-revalidate, no-transform"),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}
