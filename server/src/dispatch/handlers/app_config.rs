//! `app:show` and `edit`: an application's config in
//! `root_dir/applications/NAME/config.yml`.

use pantry_shared::commands::app_config;
use pantry_shared::Message;
use slog::{info, warn};

use super::{Done, Reply, Services};

pub async fn show(s: Services, m: Message) -> Done {
    Reply::Message(app_config::respond_show(&m, &s.root_dir)).into()
}

pub async fn edit(s: Services, m: Message) -> Done {
    let response = app_config::respond_edit(&m, &s.root_dir);
    match response.error() {
        None => info!(s.log, "application config saved";
            "application" => app_config::application(&m).unwrap_or_default(), "from" => &m.metadata.from),
        Some(e) => warn!(s.log, "application config not saved"; "error" => e),
    }
    Reply::Message(response).into()
}
