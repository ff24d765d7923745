//! The discovery calls of API doc §6 and §7: the paged asset listing (with the test quirks of
//! `[listing]`), an asset's index (analysis) status, and the deprecated index list. Pure
//! renderings of the store; `api.rs` routes, authenticates and counts.

use serde::Serialize;
use serde_json::{Value, json};

use super::clock::{Clock, kst_string};
use super::state::Store;

/// The doc's maximum page size; above it the call is a `10001`.
pub const MAX_PAGE_SIZE: u64 = 1_000;

/// Page size when the request gives none (undocumented; clients should always send one).
pub const DEFAULT_PAGE_SIZE: u64 = 20;

/// How many more assets than exist a lying `totalCount` claims.
pub const LIE_EXTRA: u64 = 1_000;

/// The listing's run-time settings: the page base (drawn or pinned) and the test quirks.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub page_base: u64,
    pub pages_forever: bool,
    pub lying_total_count: bool,
    pub injected_asset_ids: Vec<String>,
}

/// `pageNum` and `pageSize` from the raw query. Missing: the first page, `DEFAULT_PAGE_SIZE`.
/// Anything but plain digits, a size of 0 or above `MAX_PAGE_SIZE`: None (a `10001`). Other
/// parameters are ignored; a repeated one counts once, the first time.
pub fn parse_page_query(query: Option<&str>, base: u64) -> Option<(u64, u64)> {
    let mut page = None;
    let mut size = None;
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "pageNum" => &mut page,
            "pageSize" => &mut size,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = Some(value.parse::<u64>().ok()?);
    }
    let size = size.unwrap_or(DEFAULT_PAGE_SIZE);
    if size == 0 || size > MAX_PAGE_SIZE {
        return None;
    }
    Some((page.unwrap_or(base), size))
}

/// An id as the listing sends it: a JSON integer when it is canonical digits (the doc's
/// `assetId` is an integer), else a string, so an id with leading zeros or an unsafe injected
/// one reaches the client exactly.
fn id_value(id: &str) -> Value {
    match id.parse::<u64>() {
        Ok(n) if n.to_string() == id => Value::from(n),
        _ => Value::from(id),
    }
}

/// The `result` of `GET …/projects/{p}/assets?pageNum=&pageSize=`: the project's assets in
/// their stable order, then the injected ids. A page below the base is read as the first page
/// (and `pageNo` says so); a page past the end is empty.
pub fn list_assets(
    store: &Store,
    listing: &Listing,
    ws: &str,
    proj: &str,
    page: u64,
    size: u64,
) -> Value {
    let real = store.project_assets(ws, proj);
    let injected = &listing.injected_asset_ids;
    let total = (real.len() + injected.len()) as u64;
    let page = page.max(listing.page_base);
    let ordinal = page - listing.page_base;
    let start = if listing.pages_forever {
        0
    } else {
        ordinal.saturating_mul(size)
    };
    let end = start.saturating_add(size).min(total);
    let project_id = id_value(proj);
    let content: Vec<Value> = (start..end)
        .filter_map(|n| usize::try_from(n).ok())
        .filter_map(|n| match real.get(n) {
            Some(asset_id) => {
                let file_name = store
                    .latest(ws, proj, asset_id)
                    .and_then(|i| store.assets.get(i))
                    .map(|a| a.file_name())
                    .unwrap_or_default();
                Some((asset_id.as_str(), file_name))
            }
            None => injected
                .get(n - real.len())
                .map(|id| (id.as_str(), "injected.mp4".to_owned())),
        })
        .map(|(asset_id, file_name)| {
            json!({
                "assetId": id_value(asset_id),
                "fileName": file_name,
                "projectId": project_id,
                "metaData": { "mediaType": "VIDEO" },
            })
        })
        .collect();
    let pages = |count: u64| count.div_ceil(size);
    let (total_count, total_page) = if listing.pages_forever {
        // Always one more page than the one asked for, however far the client goes.
        let total_page = ordinal.saturating_add(2);
        (total_page.saturating_mul(size), total_page)
    } else if listing.lying_total_count {
        let claimed = total.saturating_add(LIE_EXTRA);
        (claimed, pages(claimed))
    } else {
        (total, pages(total))
    };
    json!({
        "content": content,
        "totalCount": total_count,
        "totalPage": total_page,
        "pageNo": page,
        "pageSize": size,
    })
}

/// The `result` of `GET …/assets/{a}/index/status` for an asset's latest index (entry `i`):
/// `indexId` only once analysis has completed.
pub fn analysis_status(store: &Store, i: usize) -> Option<Value> {
    let a = store.assets.get(i)?;
    let mut out = json!({
        "status": a.analysis.as_str(),
        "analyzeStatusMessage": a.analysis_message(),
    });
    if a.analysis == super::scenario::AnalysisStatus::AnalyzeCompleted
        && let Some(obj) = out.as_object_mut()
    {
        obj.insert("indexId".into(), Value::from(a.index_id));
    }
    Some(out)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries() {
        assert_eq!(parse_page_query(None, 1), Some((1, DEFAULT_PAGE_SIZE)));
        assert_eq!(
            parse_page_query(Some("pageNum=3&pageSize=50"), 0),
            Some((3, 50))
        );
        assert_eq!(
            parse_page_query(Some("x=1&pageSize=1000&pageNum=0&pageNum=9"), 1),
            Some((0, 1000))
        );
        for bad in [
            "pageSize=1001",
            "pageSize=0",
            "pageNum=-1",
            "pageNum=%31",
            "pageNum=",
            "pageSize=99999999999999999999999",
        ] {
            assert_eq!(parse_page_query(Some(bad), 0), None, "{bad}");
        }
    }

    #[test]
    fn ids_keep_their_exact_form() {
        assert_eq!(id_value("2001"), json!(2001));
        assert_eq!(id_value("0012"), json!("0012"));
        assert_eq!(id_value("../x"), json!("../x"));
        assert_eq!(id_value(""), json!(""));
    }
}
