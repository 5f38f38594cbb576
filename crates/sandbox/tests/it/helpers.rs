//! A started sandbox plus a small JSON client that keeps status, headers and body together.

use handoff_sandbox::Config;
use handoff_sandbox::testing::{self, Running, TEST_TOKEN};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// One answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running sandbox and a client.
pub struct Hs {
    pub sb: Running,
    pub http: reqwest::Client,
}

pub async fn start() -> Hs {
    start_with(testing::config()).await
}

pub async fn start_with(cfg: Config) -> Hs {
    let sb = testing::spawn(cfg).await.expect("sandbox starts");
    Hs {
        sb,
        http: reqwest::Client::new(),
    }
}

impl Hs {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sb.base_url)
    }

    /// Sends with `token` (None: no Authorization header); panics on a transport error.
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        self.try_send_as(token, method, path, body)
            .await
            .expect("transport")
    }

    pub async fn try_send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Resp, reqwest::Error> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        };
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send_as(Some(TEST_TOKEN), Method::GET, path, None)
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send_as(Some(TEST_TOKEN), Method::POST, path, Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.send_as(Some(TEST_TOKEN), Method::PATCH, path, Some(body))
            .await
    }

    pub async fn put(&self, path: &str) -> Resp {
        self.send_as(Some(TEST_TOKEN), Method::PUT, path, None)
            .await
    }

    /// Creates a record and returns its id.
    pub async fn create(&self, ty: &str, props: Value) -> String {
        let r = self
            .post(
                &format!("/crm/v3/objects/{ty}"),
                json!({ "properties": props }),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }
}
