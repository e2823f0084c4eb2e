//! Reading the fetcher's progress: the operator asks the running fetcher pod for
//! `GET http://<pod IP>:9090/progress` (`{"chunksDone": N, "chunksTotal": M}`), the same
//! numbers the fetcher exports as natsflow_chunks_done and natsflow_chunks.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{api::ListParams, Api};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    children::{self, Component, METRICS_PORT},
    crd::Pipeline,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Progress {
    chunks_done: u64,
    chunks_total: u64,
}

/// `None` while no fetcher pod runs or it does not answer within a second.
pub async fn read(pods: &Api<Pod>, p: &Pipeline) -> Result<Option<(u64, u64)>, kube::Error> {
    let selector = children::selector_string(p, Component::Fetcher);
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let ip = list.items.iter().find_map(|pod| {
        let s = pod.status.as_ref()?;
        (s.phase.as_deref() == Some("Running"))
            .then(|| s.pod_ip.clone())
            .flatten()
    });
    let Some(ip) = ip else { return Ok(None) };
    Ok(tokio::time::timeout(Duration::from_secs(1), get(&ip))
        .await
        .ok()
        .flatten())
}

async fn get(ip: &str) -> Option<(u64, u64)> {
    let mut s = tokio::net::TcpStream::connect((ip, METRICS_PORT as u16))
        .await
        .ok()?;
    s.write_all(b"GET /progress HTTP/1.0\r\nHost: fetcher\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::with_capacity(256);
    s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    let p: Progress = serde_json::from_str(body).ok()?;
    Some((p.chunks_done, p.chunks_total))
}
