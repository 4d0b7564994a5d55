//! The CLI as a client of a running controller's API (`--server`, `SLIPWAY_SERVER`).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use slipway_engine::EnvironmentStatus;

use crate::{Output, render};

/// Calls the API; returns the JSON body, or an error that carries the server's message.
pub fn call(
    server: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let Some(token) = token else {
        bail!(
            "--server needs a token: pass --token or set SLIPWAY_TOKEN (an admin makes one with `slipway token create --role developer`)"
        );
    };
    let url = format!("{}/api/v1{path}", server.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        (_, Some(body)) => agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(body),
        (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
    }
    .with_context(|| {
        format!("cannot reach the controller at {server}; is `slipway serve` running?")
    })?;
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if status >= 400 {
        let message = json
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or(text.as_str())
            .to_string();
        match json.get("hint").and_then(Value::as_str) {
            Some(hint) => bail!("the controller refused ({status}): {message}\n  hint: {hint}"),
            None => bail!("the controller refused ({status}): {message}"),
        }
    }
    Ok(json)
}

pub fn status(
    server: &str,
    token: Option<&str>,
    env: Option<&str>,
    output: Output,
) -> Result<ExitCode> {
    let json = match env {
        Some(name) => {
            let one = call(server, token, "GET", &format!("/environments/{name}"), None)?;
            serde_json::json!({ "environments": [one] })
        }
        None => call(server, token, "GET", "/environments", None)?,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Text => {
            let envs: Vec<EnvironmentStatus> = serde_json::from_value(json["environments"].clone())
                .context("the controller answered with an unexpected shape")?;
            render::status_text(&envs);
        }
    }
    Ok(ExitCode::SUCCESS)
}
