//! `jobs` and `job ID`: read from the job store, on the reader's thread.

use pantry_shared::commands::jobs as jobs_command;
use pantry_shared::filter::{Identities, IDENTITIES_FIELD};
use pantry_shared::Message;
use serde_json::Value;

use crate::jobs::{ListJobs, ShowJob};

use super::{reply, Done, Services};
use crate::dispatch::Refused;

/// The identity patterns of a request, as given.
fn identity_patterns(m: &Message) -> Vec<String> {
    m.metadata
        .custom
        .get(IDENTITIES_FIELD)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

pub async fn list(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let (limit, filter) = jobs_command::parse_list(&m).map_err(|e| e.to_string())?;
        let patterns = Identities::of(&m)?.map(|_| identity_patterns(&m)).unwrap_or_default();
        let selects = filter.application.is_some() || filter.environment.is_some() || !filter.roles.is_empty();
        let stream = if selects { Some(filter.target_stream()?) } else { None };
        match s.job_reader.send(ListJobs { limit, stream, patterns }).await {
            Ok(Ok(jobs)) => Ok(jobs_command::respond_list(&m, &jobs)),
            Ok(Err(e)) => Err(Refused::from(format!("cannot read the jobs: {e}"))),
            Err(e) => Err(Refused::from(format!("job store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}

pub async fn show(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let id = jobs_command::id(&m).ok_or("job needs an id")?.to_owned();
        match s.job_reader.send(ShowJob { id: id.clone() }).await {
            Ok(Ok(Some(job))) => Ok(jobs_command::respond_show(&m, &job)),
            Ok(Ok(None)) => Err(Refused::from(format!("no job {id}"))),
            Ok(Err(e)) => Err(Refused::from(format!("cannot read the job: {e}"))),
            Err(e) => Err(Refused::from(format!("job store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}
