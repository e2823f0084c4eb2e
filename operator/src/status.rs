//! The Pipeline's status, computed from what the reconciler observed: conditions a user can
//! act on ("7/10 mappers ready", "Secret broadcaster-token not found"), the mapper numbers
//! for the scale subresource, and the fetcher's progress.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::{
    children::{self, Component},
    crd::{Pipeline, PipelineStatus},
};

/// Replicas wanted and ready of one worker Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workers {
    pub component: Component,
    pub wanted: i32,
    pub ready: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitoring {
    NotRequested,
    Applied,
    CrdMissing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub workers: Vec<Workers>,
    pub mapper_replicas: i32,
    pub missing_secrets: Vec<String>,
    pub monitoring: Monitoring,
    /// (chunks done, chunks total) from the fetcher.
    pub progress: Option<(u64, u64)>,
}

pub fn compute(p: &Pipeline, o: &Observed, now: &Time) -> PipelineStatus {
    let previous = p
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        condition(
            previous,
            type_,
            status,
            reason,
            message,
            p.metadata.generation,
            now,
        )
    };
    let mappers = o
        .workers
        .iter()
        .find(|w| w.component == Component::Mapper)
        .copied();
    let not_ready: Vec<String> = o
        .workers
        .iter()
        .filter(|w| w.ready < w.wanted)
        .map(|w| format!("{}/{} {}s ready", w.ready, w.wanted, w.component.as_str()))
        .collect();

    let mut conditions = Vec::new();
    if let Some(first) = o.missing_secrets.first() {
        let msg = match o.missing_secrets.len() {
            1 => format!("Secret {first} not found: create it in this namespace"),
            _ => format!(
                "Secrets {} not found: create them in this namespace",
                o.missing_secrets.join(", ")
            ),
        };
        conditions.push(cond("Ready", false, "SecretMissing", msg.clone()));
        conditions.push(cond("Degraded", true, "SecretMissing", msg));
    } else if not_ready.is_empty() {
        let total: i32 = o.workers.iter().map(|w| w.wanted).sum();
        conditions.push(cond(
            "Ready",
            true,
            "WorkersReady",
            format!("all {total} workers ready"),
        ));
        conditions.push(cond(
            "Degraded",
            false,
            "AsExpected",
            "no problem found".into(),
        ));
    } else {
        conditions.push(cond(
            "Ready",
            false,
            "WorkersNotReady",
            not_ready.join(", "),
        ));
        conditions.push(cond(
            "Degraded",
            false,
            "AsExpected",
            "no problem found".into(),
        ));
    }
    conditions.push(match o.progress {
        Some((done, 0)) if done > 0 => cond(
            "Progressing",
            true,
            "Processing",
            format!("{done} chunks saved; the source is still being read"),
        ),
        Some((done, total)) if total > 0 && done >= total => cond(
            "Progressing",
            false,
            "Complete",
            format!("all {total} chunks saved"),
        ),
        Some((done, total)) => cond(
            "Progressing",
            true,
            "Processing",
            format!("{done}/{total} chunks saved"),
        ),
        None => condition(
            previous,
            "Progressing",
            "Unknown",
            "WaitingForFetcher",
            "the fetcher has not reported progress yet".into(),
            p.metadata.generation,
            now,
        ),
    });
    // Name what the user asked for: the workers' ServiceMonitor, NATS's, or both.
    let asked: Vec<(&str, String, &str)> = [
        children::service_monitor::service_monitor(p)
            .map(|_| ("serviceMonitor", p.name_any(), "the workers")),
        children::service_monitor::nats_service_monitor(p).map(|_| {
            (
                "natsServiceMonitor",
                children::service_monitor::nats_name(p),
                "NATS",
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    match o.monitoring {
        Monitoring::NotRequested => {}
        Monitoring::Applied => {
            let what: Vec<String> = asked
                .iter()
                .map(|(_, name, scrapes)| format!("ServiceMonitor {name} scrapes {scrapes}"))
                .collect();
            conditions.push(cond(
                "Monitoring",
                true,
                "ServiceMonitorApplied",
                what.join("; "),
            ))
        }
        Monitoring::CrdMissing => {
            let fields: Vec<String> = asked
                .iter()
                .map(|(field, _, _)| format!("spec.monitoring.{field}.enabled"))
                .collect();
            conditions.push(cond(
                "Monitoring",
                false,
                "ServiceMonitorCRDMissing",
                format!(
                    "monitoring.coreos.com/v1 ServiceMonitor is not installed: install the Prometheus operator, or set {} to false",
                    fields.join(" and ")
                ),
            ))
        }
    }

    PipelineStatus {
        observed_generation: p.metadata.generation,
        conditions,
        mapper_replicas: o.mapper_replicas,
        ready_mappers: mappers.map_or(0, |m| m.ready),
        mapper_selector: children::mapper_selector(p),
        progress: o.progress.map(|(d, t)| {
            if t == 0 && d > 0 {
                format!("{d}/?")
            } else {
                format!("{d}/{t}")
            }
        }),
        chunks_done: o.progress.map(|(d, _)| d),
        chunks_total: o.progress.map(|(_, t)| t),
    }
}

/// A condition that keeps its lastTransitionTime while its status stays the same.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The condition of a type, if set.
pub fn get<'a>(s: Option<&'a PipelineStatus>, type_: &str) -> Option<&'a Condition> {
    s?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::{pipeline, MINIMAL};

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn observed(ready_mappers: i32) -> Observed {
        Observed {
            workers: vec![
                Workers {
                    component: Component::Fetcher,
                    wanted: 1,
                    ready: 1,
                },
                Workers {
                    component: Component::Mapper,
                    wanted: 10,
                    ready: ready_mappers,
                },
                Workers {
                    component: Component::Saver,
                    wanted: 1,
                    ready: 1,
                },
            ],
            mapper_replicas: 10,
            missing_secrets: vec![],
            monitoring: Monitoring::NotRequested,
            progress: Some((412, 1000)),
        }
    }

    #[test]
    fn not_ready_mappers_are_counted() {
        let s = compute(&pipeline(MINIMAL), &observed(7), &now());
        let ready = get(Some(&s), "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("False", "7/10 mappers ready")
        );
        assert_eq!(s.ready_mappers, 7);
        assert_eq!(s.mapper_replicas, 10);
        assert_eq!(s.progress.as_deref(), Some("412/1000"));
        assert_eq!(s.mapper_selector, "app.kubernetes.io/component=mapper,app.kubernetes.io/instance=users,app.kubernetes.io/name=natsflow");
        assert_eq!(
            get(Some(&s), "Progressing").unwrap().message,
            "412/1000 chunks saved"
        );
    }

    #[test]
    fn all_ready() {
        let s = compute(&pipeline(MINIMAL), &observed(10), &now());
        let ready = get(Some(&s), "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("True", "all 12 workers ready")
        );
        assert_eq!(get(Some(&s), "Degraded").unwrap().status, "False");
    }

    #[test]
    fn a_missing_secret_is_degraded_and_named() {
        let mut o = observed(10);
        o.missing_secrets = vec!["broadcaster-token".into()];
        let s = compute(&pipeline(MINIMAL), &o, &now());
        let d = get(Some(&s), "Degraded").unwrap();
        assert_eq!(d.status, "True");
        assert_eq!(d.reason, "SecretMissing");
        assert!(d.message.starts_with("Secret broadcaster-token not found"));
    }

    #[test]
    fn a_streaming_source_is_not_complete_before_its_total_is_known() {
        let mut o = observed(10);
        o.progress = Some((412, 0));
        let s = compute(&pipeline(MINIMAL), &o, &now());
        let p = get(Some(&s), "Progressing").unwrap();
        assert_eq!(
            (p.status.as_str(), p.message.as_str()),
            ("True", "412 chunks saved; the source is still being read")
        );
        assert_eq!(s.progress.as_deref(), Some("412/?"));
    }

    #[test]
    fn complete_and_monitoring_crd_missing() {
        let mut o = observed(10);
        o.progress = Some((1000, 1000));
        o.monitoring = Monitoring::CrdMissing;
        let nats_only = format!("{MINIMAL}monitoring: {{natsServiceMonitor: {{enabled: true}}}}\n");
        let s = compute(&pipeline(&nats_only), &o, &now());
        assert_eq!(get(Some(&s), "Progressing").unwrap().reason, "Complete");
        let m = get(Some(&s), "Monitoring").unwrap();
        assert_eq!(
            (m.status.as_str(), m.reason.as_str(), m.message.as_str()),
            ("False", "ServiceMonitorCRDMissing", "monitoring.coreos.com/v1 ServiceMonitor is not installed: install the Prometheus operator, or set spec.monitoring.natsServiceMonitor.enabled to false")
        );
    }

    #[test]
    fn monitoring_names_the_service_monitors_applied() {
        let mut o = observed(10);
        o.monitoring = Monitoring::Applied;
        let both = format!("{MINIMAL}monitoring: {{serviceMonitor: {{enabled: true}}, natsServiceMonitor: {{enabled: true}}}}\n");
        let s = compute(&pipeline(&both), &o, &now());
        assert_eq!(
            get(Some(&s), "Monitoring").unwrap().message,
            "ServiceMonitor users scrapes the workers; ServiceMonitor users-nats scrapes NATS"
        );
    }

    #[test]
    fn transition_time_stays_while_the_status_does() {
        let mut p = pipeline(MINIMAL);
        let first = compute(&p, &observed(7), &now());
        p.status = Some(first.clone());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).unwrap());
        let second = compute(&p, &observed(8), &later);
        assert_eq!(
            get(Some(&second), "Ready").unwrap().last_transition_time,
            now()
        );
        assert_eq!(
            get(Some(&second), "Ready").unwrap().message,
            "8/10 mappers ready"
        );
        let third = compute(&p, &observed(10), &later);
        assert_eq!(
            get(Some(&third), "Ready").unwrap().last_transition_time,
            later
        );
    }
}
