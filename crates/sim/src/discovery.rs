//! The discovery calls of API doc §6 and §7; so far the deprecated index list. Pure renderings
//! of the store; `api.rs` routes, authenticates and counts.

use serde_json::{Value, json};

use super::clock::{Clock, kst_string};
use super::state::Store;

/// The `result` of the deprecated `GET …/assets/{a}/indexes` (§7): every index of the asset,
/// oldest first.
pub fn index_list(store: &Store, clock: &Clock, ws: &str, proj: &str, asset: &str) -> Value {
    let indexes: Vec<Value> = store
        .indexes_of(ws, proj, asset)
        .iter()
        .filter_map(|&i| store.assets.get(i))
        .map(|a| {
            json!({
                "indexId": a.index_id,
                "type": "VIDEO",
                "createdTime": kst_string(clock.wall_secs_of(a.created_at)),
                "updatedTime": kst_string(clock.wall_secs_of(a.updated_at())),
            })
        })
        .collect();
    json!({ "totalCount": indexes.len(), "indexes": indexes })
}
