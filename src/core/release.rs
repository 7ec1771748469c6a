//! The release state machine: commands in, a new state plus an event out. Pure — no I/O,
//! no pingora, no tokio — so every transition is unit-tested here and the controller only
//! runs checks, persists and publishes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::color::Color;

/// A canary in progress: `weight` percent of new requests go to `color`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub color: Color,
    pub weight: u8,
    /// The remaining plan: weights still to apply, one per interval.
    #[serde(default)]
    pub steps: Vec<u8>,
    #[serde(default)]
    pub interval_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRelease {
    pub active: Color,
    pub previous: Option<Color>,
    #[serde(default)]
    pub canary: Option<Canary>,
}

impl Default for ServiceRelease {
    fn default() -> Self {
        ServiceRelease {
            active: Color::Blue,
            previous: None,
            canary: None,
        }
    }
}

/// The release state of every releasable service. Services absent from the map are blue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseState {
    pub services: BTreeMap<String, ServiceRelease>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make `to` the active color of each service.
    Switch { services: Vec<String>, to: Color },
    /// Return each service to its previous color.
    Rollback { services: Vec<String> },
    /// Send `steps[0]` percent of requests to `color`; the rest of `steps` follow.
    StartCanary {
        services: Vec<String>,
        color: Color,
        steps: Vec<u8>,
        interval_s: u64,
    },
    /// Move each running canary to its next step.
    NextStep { services: Vec<String> },
    /// Make each running canary's color active.
    Promote { services: Vec<String> },
    /// Drop each running canary (weight 0); the active color stays.
    Abort { services: Vec<String> },
}

/// What a command changed, for history and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub service: String,
    pub from: Color,
    pub to: Color,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Rollback of a service that never switched.
    NothingToRollBack { service: String },
    /// A switch or rollback while a canary runs: promote or abort it first.
    CanaryRunning { service: String },
    /// Promote, abort or step without a canary.
    NoCanary { service: String },
    /// A canary of the color that is already active.
    AlreadyActive { service: String, color: Color },
    /// Steps must rise, each within 1–100.
    BadSteps(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NothingToRollBack { service } => {
                write!(
                    f,
                    "nothing to roll back to: `{service}` has no previous color"
                )
            }
            Refusal::CanaryRunning { service } => write!(
                f,
                "a canary is running on `{service}`: promote or abort it first"
            ),
            Refusal::NoCanary { service } => write!(f, "no canary is running on `{service}`"),
            Refusal::AlreadyActive { service, color } => {
                write!(f, "{color} is already the active color of `{service}`")
            }
            Refusal::BadSteps(m) => write!(f, "steps: {m}"),
        }
    }
}

impl ReleaseState {
    pub fn get(&self, service: &str) -> ServiceRelease {
        self.services.get(service).cloned().unwrap_or_default()
    }

    /// Applies a command to every named service as one transaction: either every service
    /// changes or none does. Services already where the command would put them are left out
    /// of the changes (a switch to the active color is a no-op).
    pub fn apply(&self, cmd: &Command) -> Result<(ReleaseState, Vec<Change>), Refusal> {
        let mut next = self.clone();
        let mut changes = Vec::new();
        match cmd {
            Command::Switch { services, to } => {
                for s in services {
                    let cur = self.get(s);
                    if cur.canary.is_some() {
                        return Err(Refusal::CanaryRunning { service: s.clone() });
                    }
                    if cur.active == *to {
                        continue;
                    }
                    next.move_to(s, &cur, *to, Some(cur.active), &mut changes);
                }
            }
            Command::Rollback { services } => {
                for s in services {
                    let cur = self.get(s);
                    if cur.canary.is_some() {
                        return Err(Refusal::CanaryRunning { service: s.clone() });
                    }
                    let Some(prev) = cur.previous else {
                        return Err(Refusal::NothingToRollBack { service: s.clone() });
                    };
                    // The release is undone, not swapped: a second rollback must not bring
                    // the bad color back.
                    next.move_to(s, &cur, prev, None, &mut changes);
                }
            }
            Command::StartCanary {
                services,
                color,
                steps,
                interval_s,
            } => {
                check_steps(steps)?;
                for s in services {
                    let cur = self.get(s);
                    if cur.canary.is_some() {
                        return Err(Refusal::CanaryRunning { service: s.clone() });
                    }
                    if cur.active == *color {
                        return Err(Refusal::AlreadyActive {
                            service: s.clone(),
                            color: *color,
                        });
                    }
                    next.services.insert(
                        s.clone(),
                        ServiceRelease {
                            canary: Some(Canary {
                                color: *color,
                                weight: steps[0],
                                steps: steps[1..].to_vec(),
                                interval_s: *interval_s,
                            }),
                            ..cur
                        },
                    );
                }
            }
            Command::NextStep { services } => {
                for s in services {
                    let mut cur = self.get(s);
                    let Some(c) = cur.canary.as_mut() else {
                        return Err(Refusal::NoCanary { service: s.clone() });
                    };
                    if c.steps.is_empty() {
                        return Err(Refusal::BadSteps(format!(
                            "`{s}` has no step left: promote"
                        )));
                    }
                    c.weight = c.steps.remove(0);
                    next.services.insert(s.clone(), cur);
                }
            }
            Command::Promote { services } => {
                for s in services {
                    let cur = self.get(s);
                    let Some(c) = &cur.canary else {
                        return Err(Refusal::NoCanary { service: s.clone() });
                    };
                    next.move_to(s, &cur, c.color, Some(cur.active), &mut changes);
                }
            }
            Command::Abort { services } => {
                for s in services {
                    let cur = self.get(s);
                    if cur.canary.is_none() {
                        return Err(Refusal::NoCanary { service: s.clone() });
                    }
                    next.services.insert(
                        s.clone(),
                        ServiceRelease {
                            canary: None,
                            ..cur
                        },
                    );
                }
            }
        }
        Ok((next, changes))
    }

    /// Makes `to` the active color of `service` (no canary), recording the change.
    fn move_to(
        &mut self,
        service: &str,
        cur: &ServiceRelease,
        to: Color,
        previous: Option<Color>,
        changes: &mut Vec<Change>,
    ) {
        changes.push(Change {
            service: service.to_string(),
            from: cur.active,
            to,
        });
        self.services.insert(
            service.to_string(),
            ServiceRelease {
                active: to,
                previous,
                canary: None,
            },
        );
    }

    /// The services with a canary running.
    pub fn canaries(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|(_, r)| r.canary.is_some())
            .map(|(s, _)| s.clone())
            .collect()
    }
}

fn check_steps(steps: &[u8]) -> Result<(), Refusal> {
    if steps.is_empty() {
        return Err(Refusal::BadSteps("give at least one step".into()));
    }
    if steps.iter().any(|w| *w == 0 || *w > 100) {
        return Err(Refusal::BadSteps(
            "each step is a weight from 1 to 100".into(),
        ));
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Refusal::BadSteps("weights must rise (5,25,50,100)".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn services_start_blue_with_no_previous() {
        let s = ReleaseState::default();
        assert_eq!(s.get("api").active, Color::Blue);
        assert_eq!(s.get("api").previous, None);
    }

    #[test]
    fn switch_moves_every_service_and_records_previous() {
        let s = ReleaseState::default();
        let (next, changes) = s
            .apply(&Command::Switch {
                services: names(&["api", "web"]),
                to: Color::Green,
            })
            .unwrap();
        assert_eq!(changes.len(), 2);
        for svc in ["api", "web"] {
            assert_eq!(next.get(svc).active, Color::Green);
            assert_eq!(next.get(svc).previous, Some(Color::Blue));
        }
        // The original is untouched: the caller publishes `next` only when all went well.
        assert_eq!(s.get("api").active, Color::Blue);
    }

    #[test]
    fn switch_to_the_active_color_changes_nothing() {
        let s = ReleaseState::default();
        let (next, changes) = s
            .apply(&Command::Switch {
                services: names(&["api"]),
                to: Color::Blue,
            })
            .unwrap();
        assert!(changes.is_empty());
        assert_eq!(next, s);
    }

    #[test]
    fn rollback_returns_to_previous_once() {
        let s = ReleaseState::default();
        let (s, _) = s
            .apply(&Command::Switch {
                services: names(&["api"]),
                to: Color::Green,
            })
            .unwrap();
        let (s, changes) = s
            .apply(&Command::Rollback {
                services: names(&["api"]),
            })
            .unwrap();
        assert_eq!(
            changes,
            vec![Change {
                service: "api".into(),
                from: Color::Green,
                to: Color::Blue
            }]
        );
        assert_eq!(s.get("api").active, Color::Blue);
        assert_eq!(s.get("api").previous, None);
        assert!(s
            .apply(&Command::Rollback {
                services: names(&["api"]),
            })
            .is_err());
    }

    #[test]
    fn rollback_with_no_previous_is_refused_for_all() {
        let s = ReleaseState::default();
        let (s, _) = s
            .apply(&Command::Switch {
                services: names(&["api"]),
                to: Color::Green,
            })
            .unwrap();
        let err = s
            .apply(&Command::Rollback {
                services: names(&["api", "web"]),
            })
            .unwrap_err();
        assert_eq!(
            err,
            Refusal::NothingToRollBack {
                service: "web".into()
            }
        );
    }

    #[test]
    fn canary_steps_then_promotes() {
        let s = ReleaseState::default();
        let (s, _) = s
            .apply(&Command::StartCanary {
                services: names(&["api"]),
                color: Color::Green,
                steps: vec![5, 50, 100],
                interval_s: 30,
            })
            .unwrap();
        let c = s.get("api").canary.unwrap();
        assert_eq!((c.weight, c.steps.clone()), (5, vec![50, 100]));
        assert_eq!(s.get("api").active, Color::Blue);
        let (s, _) = s
            .apply(&Command::NextStep {
                services: names(&["api"]),
            })
            .unwrap();
        assert_eq!(s.get("api").canary.unwrap().weight, 50);
        let (s, changes) = s
            .apply(&Command::Promote {
                services: names(&["api"]),
            })
            .unwrap();
        assert_eq!(changes[0].to, Color::Green);
        assert_eq!(s.get("api").active, Color::Green);
        assert_eq!(s.get("api").previous, Some(Color::Blue));
        assert!(s.get("api").canary.is_none());
    }

    #[test]
    fn canary_abort_keeps_active_and_bad_steps_are_refused() {
        let s = ReleaseState::default();
        let start = |steps: Vec<u8>| Command::StartCanary {
            services: names(&["api"]),
            color: Color::Green,
            steps,
            interval_s: 1,
        };
        assert!(matches!(
            s.apply(&start(vec![50, 25])),
            Err(Refusal::BadSteps(_))
        ));
        assert!(matches!(
            s.apply(&start(vec![0, 100])),
            Err(Refusal::BadSteps(_))
        ));
        assert!(matches!(s.apply(&start(vec![])), Err(Refusal::BadSteps(_))));
        let blue = Command::StartCanary {
            services: names(&["api"]),
            color: Color::Blue,
            steps: vec![10],
            interval_s: 1,
        };
        assert!(matches!(s.apply(&blue), Err(Refusal::AlreadyActive { .. })));
        let (s, _) = s.apply(&start(vec![10, 100])).unwrap();
        let (s, _) = s
            .apply(&Command::Abort {
                services: names(&["api"]),
            })
            .unwrap();
        assert_eq!(s.get("api").active, Color::Blue);
        assert!(s.get("api").canary.is_none());
        assert!(matches!(
            s.apply(&Command::Promote {
                services: names(&["api"])
            }),
            Err(Refusal::NoCanary { .. })
        ));
    }

    #[test]
    fn a_running_canary_blocks_switch() {
        let mut s = ReleaseState::default();
        s.services.insert(
            "api".into(),
            ServiceRelease {
                active: Color::Blue,
                previous: None,
                canary: Some(Canary {
                    color: Color::Green,
                    weight: 5,
                    steps: vec![25, 100],
                    interval_s: 30,
                }),
            },
        );
        assert!(matches!(
            s.apply(&Command::Switch {
                services: names(&["api"]),
                to: Color::Green
            }),
            Err(Refusal::CanaryRunning { .. })
        ));
    }
}
