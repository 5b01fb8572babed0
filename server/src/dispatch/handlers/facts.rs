//! `Facts`, an agent's report of what it is, kept in the registry (and the
//! database, and etcd in a cluster); and `ListFacts`, the admin's `facts`
//! query. A report bigger than 64 KiB is refused and the previous facts
//! kept; keys that are not `[A-Za-z0-9_.-]+` are dropped, each named in a
//! warn line.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pantry_shared::commands::facts::{self, AgentFacts, ReportError};
use pantry_shared::facts::{drop_invalid_keys, FactFilter};
use pantry_shared::filter::Identities;
use pantry_shared::Message;
use slog::{debug, warn};

use crate::client_registry::{Query, ReportFacts};
use crate::messages::PeerAuth;
use crate::store::StoredFacts;

use super::{reply, Done, Services};
use crate::dispatch::Refused;

pub async fn report(s: Services, auth: Option<Arc<PeerAuth>>, m: Message) -> Done {
    let (identity, key) = (m.metadata.from.clone(), auth.as_ref().map(|a| a.key.clone()));
    let result: Result<_, Refused> = async {
        let mut report = facts::parse(&m).inspect_err(|e| {
            if let ReportError::TooBig(size) = e {
                warn!(s.log, "client facts refused: too big; its previous facts are kept";
                    "identity" => &identity, "bytes" => size, "key" => key.as_deref().unwrap_or("-"));
            }
        })?;
        for bad in drop_invalid_keys(&mut report.facts) {
            warn!(s.log, "client fact dropped: a key is made of letters, digits, `_`, `.` and `-`";
                "identity" => &identity, "fact" => &bad);
        }
        let gathered = humantime::parse_rfc3339_weak(&report.gathered)
            .map_err(|e| Refused::from(format!("gathered: {e}")))?
            .min(SystemTime::now());
        // The server's own digest (of what it keeps), not the agent's word.
        let stored = StoredFacts {
            hash: pantry_shared::facts::hash(&report.facts),
            facts: report.facts,
            gathered,
            interval: Duration::from_secs(report.interval.max(1)),
        };
        let count = stored.facts.len();
        s.registry
            .send(ReportFacts { identity: identity.clone(), key: key.clone(), facts: stored })
            .await
            .map_err(|e| Refused::from(format!("registry unavailable: {e}")))??;
        debug!(s.log, "client facts received"; "identity" => &identity, "facts" => count);
        Ok(m.response())
    }
    .await;
    reply(&m, result)
}

pub async fn list(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let (filter, keys) = facts::parse_list(&m)?;
        let identities = Identities::of(&m)?;
        let fact_filter = FactFilter::of(&m)?.map(Arc::new);
        let listed = s
            .registry
            .send(Query { filter, identities, facts: fact_filter, with_facts: true })
            .await
            .map_err(|e| Refused::from(format!("registry unavailable: {e}")))?;
        let agents: Vec<AgentFacts> = listed
            .into_iter()
            .map(|l| {
                let (facts, gathered) = match &l.facts {
                    Some(known) => {
                        let facts = known.facts.iter().filter(|(k, _)| keys.is_empty() || keys.contains(k));
                        (facts.map(|(k, v)| (k.clone(), v.clone())).collect(), Some(known.gathered))
                    }
                    None => (Default::default(), None),
                };
                AgentFacts {
                    identity: l.filter.identity.clone().unwrap_or_default(),
                    online: l.online,
                    gathered: gathered.map(|g| humantime::format_rfc3339_seconds(g).to_string()),
                    fresh: l.facts_fresh,
                    facts,
                }
            })
            .collect();
        Ok(facts::respond_list(&m, &agents))
    }
    .await;
    reply(&m, result)
}
