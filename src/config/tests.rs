//! Configuration tests: defaults stay documented, every problem is reported with key and origin.

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;
use crate::domain::validate_id;

fn inline(toml: &str, env: &[(&str, &str)]) -> Sources {
    Sources {
        file: None,
        inline: Some(("test.toml".into(), toml.into())),
        env: Some(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        credentials_directory: None,
    }
}

const CREDS: &[(&str, &str)] = &[
    ("SCENEWATCH__API__ACCESS_KEY", "AK"),
    ("SCENEWATCH__API__SECRET_KEY", "SUPERSECRET-0042"),
];

fn problems(toml: &str, env: &[(&str, &str)]) -> Vec<Problem> {
    match load(&inline(toml, env)) {
        Ok(c) => panic!(
            "expected problems, got a config with {} watches",
            c.watches.len()
        ),
        Err(e) => e.0,
    }
}

#[test]
fn default_toml_equals_the_built_in_defaults() {
    let (raw, _) = load_raw(&inline(DEFAULT_TOML, &[])).expect("default.toml loads");
    assert_eq!(raw, RawConfig::default());
}

#[test]
fn minimal_config_with_env_credentials_is_valid() {
    let c = load(&inline(
        r#"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "2"
index_id = "3"
"#,
        CREDS,
    ))
    .expect("valid");
    assert_eq!(c.api.credentials.access_key, "AK");
    assert_eq!(c.watches.len(), 1);
    assert_eq!(c.poll.initial_interval, std::time::Duration::from_secs(10));
    assert_eq!(c.sinks.len(), 1, "a default file sink is added");
    // The secret never shows in Debug output of the whole config.
    assert!(!format!("{c:?}").contains("SUPERSECRET"));
}

#[test]
fn every_problem_is_reported_at_once_with_key_and_origin() {
    let ps = problems(
        r#"
state_dir = "/tmp/x"
colour = "blue"
[api]
endpiont = "https://x"
timeout = "ten seconds"
burst = "many"
[poll]
max_interval = "1s"
initial_interval = "5s"
[[watch]]
workspace = "w/../etc"
project_id = ""
asset_id = "2"
index_id = "3"
"#,
        &[("SCENEWATCH__POLL__MAX_WAIT", "forever")],
    );
    let text: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(has("colour: unknown key (in test.toml:3:1)"), "{text:#?}");
    assert!(
        has("api.endpiont: unknown key (did you mean `endpoint`?) (in test.toml:5:1)"),
        "{text:#?}"
    );
    assert!(has("api.burst: wrong type"), "{text:#?}");
    // The meaning of what did read is checked in the same pass, each key placed by its line.
    let line_has = |a: &str, b: &str| text.iter().any(|t| t.contains(a) && t.contains(b));
    assert!(
        line_has(
            "api.timeout: \"ten seconds\" is not a duration",
            "(in test.toml:6:1)"
        ),
        "{text:#?}"
    );
    assert!(
        line_has(
            "watch[0].workspace: \"w/../etc\" contains '/'",
            "(in test.toml:12:1)"
        ),
        "{text:#?}"
    );
    assert!(
        has("poll.max_wait: \"forever\" is not a duration")
            && has("from environment variable SCENEWATCH__POLL__MAX_WAIT"),
        "{text:#?}"
    );
    // A key with a shape problem is not reported a second time for its meaning.
    assert!(!has("api.burst: must"), "{text:#?}");
    assert_eq!(text.len(), ps.len());
    // Without the shape problems, the same meaning problems.
    let ps = problems(
        r#"
[api]
timeout = "ten seconds"
[poll]
max_interval = "1s"
initial_interval = "5s"
[[watch]]
workspace = "w/../etc"
project_id = ""
asset_id = "2"
index_id = "3"
"#,
        &[("SCENEWATCH__POLL__MAX_WAIT", "forever")],
    );
    let text: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("api.timeout: \"ten seconds\" is not a duration"),
        "{text:#?}"
    );
    assert!(
        has("poll.max_wait: \"forever\" is not a duration")
            && has("from environment variable SCENEWATCH__POLL__MAX_WAIT"),
        "{text:#?}"
    );
    assert!(
        has("poll.max_interval: is shorter than poll.initial_interval"),
        "{text:#?}"
    );
    assert!(
        has("watch[0].workspace: \"w/../etc\" contains '/'"),
        "{text:#?}"
    );
    assert!(
        has("watch[0].project_id: \"\" must not be empty"),
        "{text:#?}"
    );
    assert!(has("api.access_key: missing"), "{text:#?}");
    assert!(has("api.secret_key: missing"), "{text:#?}");
}

#[test]
fn duplicate_watch_names_both_places() {
    let w =
        "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
    let ps = problems(&format!("{w}{w}"), CREDS);
    assert_eq!(ps.len(), 1, "{ps:?}");
    let t = ps[0].to_string();
    assert!(t.starts_with("watch[1]: watches w/1/2/3 again"), "{t}");
    assert!(t.contains("already declared as watch[0]"), "{t}");
}

#[test]
fn ids_are_checked_as_the_design_says() {
    for ok in ["1001", "my-workspace", "a_b.c", &"x".repeat(128)] {
        assert!(validate_id(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "..",
        ".",
        "a..b",
        "a/b",
        "a b",
        "é",
        "a%2F",
        "a?b",
        &"x".repeat(129),
    ] {
        assert!(validate_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn secrets_never_appear_in_problems() {
    // A secret with the wrong type, a secret next to a conflicting file: no message echoes it.
    let ps = problems(
        "[api]\nsecret_key = \"HUNTER2-SECRET\"\nsecret_key_file = \"/nonexistent\"\n",
        &[],
    );
    for p in &ps {
        assert!(!p.to_string().contains("HUNTER2"), "{p}");
    }
    let ps = problems("[api]\nsecret_key = 12345678\n", &[]);
    assert!(!ps.is_empty());
    for p in &ps {
        assert!(!p.to_string().contains("12345678"), "{p}");
    }
}

#[test]
fn secret_from_file_and_systemd_credential() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key");
    std::fs::write(&f, "FROM-FILE\n").unwrap();
    let toml = format!(
        "[api]\naccess_key = \"AK\"\nsecret_key_file = \"{}\"\n",
        f.display()
    );
    let c = load(&inline(&toml, &[])).expect("valid");
    use secrecy::ExposeSecret;
    assert_eq!(c.api.credentials.secret_key().expose_secret(), "FROM-FILE");

    std::fs::write(dir.path().join(validate::CREDENTIAL_NAME), "FROM-SYSTEMD").unwrap();
    let mut s = inline("[api]\naccess_key = \"AK\"\n", &[]);
    s.credentials_directory = Some(dir.path().to_path_buf());
    let c = load(&s).expect("valid");
    assert_eq!(
        c.api.credentials.secret_key().expose_secret(),
        "FROM-SYSTEMD"
    );

    let ps = problems(
        "[api]\naccess_key = \"AK\"\nsecret_key_file = \"/nonexistent/key\"\n",
        &[],
    );
    assert!(
        ps[0].to_string().contains("cannot read /nonexistent/key"),
        "{}",
        ps[0]
    );
}

#[test]
fn plain_http_only_to_loopback() {
    let ps = problems("[api]\nendpoint = \"http://example.com\"\n", CREDS);
    assert!(
        ps[0].to_string().contains("only allowed to loopback"),
        "{}",
        ps[0]
    );
    for ok in [
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:9",
    ] {
        let c = load(&inline(&format!("[api]\nendpoint = \"{ok}\"\n"), CREDS));
        assert!(c.is_ok(), "{ok}: {c:?}");
    }
}

#[test]
fn unknown_sink_type_and_sink_keys() {
    let ps = problems(
        "[[sink]]\ntype = \"ftp\"\n[[sink]]\ntype = \"file\"\ndirectory = \"/x\"\n",
        CREDS,
    );
    let text: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("sink[0].type: unknown type \"ftp\"")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("sink[1].directory: unknown key")),
        "{text:?}"
    );
}

#[test]
fn missing_file_is_named() {
    let s = Sources {
        file: Some(PathBuf::from("/nonexistent/scenewatch.toml")),
        env: Some(HashMap::new()),
        ..Sources::default()
    };
    let e = load(&s).unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/scenewatch.toml"),
        "{e}"
    );
}

#[test]
fn watch_dir_files_are_watches_and_duplicates_name_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let wd = dir.path().join("watches.d");
    std::fs::create_dir(&wd).unwrap();
    let w = |asset: &str| {
        format!("workspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{asset}\"\nindex_id = \"3\"\n")
    };
    std::fs::write(wd.join("a.toml"), w("10")).unwrap();
    std::fs::write(wd.join("b.toml"), w("11")).unwrap();
    std::fs::write(wd.join("notes.txt"), "ignored").unwrap();
    let toml = format!("watch_dir = \"{}\"\n[[watch]]\n{}", wd.display(), w("9"));
    let c = load(&inline(&toml, CREDS)).expect("valid");
    let assets: Vec<_> = c.watches.iter().map(|w| w.key.asset_id()).collect();
    assert_eq!(assets, ["9", "10", "11"]);
    assert!(
        c.watches[1].declared_at.to_string().contains("a.toml"),
        "{}",
        c.watches[1].declared_at
    );

    // The same watch in the file and in the directory: one problem naming both places.
    std::fs::write(wd.join("c.toml"), w("9")).unwrap();
    let ps = problems(&toml, CREDS);
    assert_eq!(ps.len(), 1, "{ps:?}");
    let t = ps[0].to_string();
    assert!(t.contains("c.toml") && t.contains("test.toml"), "{t}");

    // A broken watch file is named.
    std::fs::write(wd.join("c.toml"), "workspace = \"w\"\nasset = 3\n").unwrap();
    let ps = problems(&toml, CREDS);
    assert!(
        ps.iter()
            .any(|p| p.to_string().contains("asset: unknown key")
                && p.to_string().contains("c.toml")),
        "{ps:?}"
    );
}

#[test]
fn sink_urls_never_carry_credentials() {
    #[cfg(feature = "nats")]
    {
        let ps = problems(
            "[[event_sink]]\ntype = \"nats\"\nurl = \"nats://s3cr3t-token@127.0.0.1:4222\"\n",
            CREDS,
        );
        assert!(
            ps.iter().any(|p| p
                .to_string()
                .contains("must not carry a user, token or password")),
            "{ps:?}"
        );
        assert!(
            ps.iter().all(|p| !p.to_string().contains("s3cr3t-token")),
            "{ps:?}"
        );
    }
    let ps = problems(
        "[[sink]]\ntype = \"webhook\"\nurl = \"https://u:pw-xyz@hooks.example.com/x\"\nsecret_env = \"NOPE_NOT_SET_1\"\n",
        CREDS,
    );
    assert!(
        ps.iter()
            .any(|p| p.to_string().contains("must not carry a user or password")),
        "{ps:?}"
    );
    assert!(
        ps.iter().all(|p| !p.to_string().contains("pw-xyz")),
        "{ps:?}"
    );
}

#[test]
#[cfg(feature = "postgres")]
fn postgres_password_is_taken_out_of_the_url() {
    let c = load(&inline(
        "[[sink]]\ntype = \"postgres\"\nurl = \"postgres://app:pg-pass-77@db.example.com:5432/media?sslmode=require\"\n",
        CREDS,
    ))
    .expect("valid");
    let SinkConfig::Postgres(pg) = &c.sinks[0] else {
        panic!("not a postgres sink: {:?}", c.sinks[0]);
    };
    assert!(!pg.url.contains("pg-pass-77"), "{}", pg.url);
    use secrecy::ExposeSecret;
    assert_eq!(
        pg.password
            .as_ref()
            .map(|p| p.expose_secret().to_string())
            .as_deref(),
        Some("pg-pass-77")
    );
    assert!(!format!("{c:?}").contains("pg-pass-77"));
    let ps = problems(
        "[[sink]]\ntype = \"postgres\"\nurl = \"postgres://app@db/media?sslmode=strict\"\n",
        CREDS,
    );
    assert!(
        ps[0]
            .to_string()
            .contains("sslmode=\"strict\" is not one of"),
        "{ps:?}"
    );
}

#[test]
fn big_files_parse_one_watch_at_a_time_with_the_same_result() {
    let mut text = String::from("state_dir = \"/x\"\n[[sink]]\ntype = \"file\"\ndir = \"/a\"\n");
    for i in 0..50 {
        text.push_str(&format!(
            "[[watch]] # number {i}\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{i}\"\nindex_id = \"3\"\n"
        ));
        if i == 20 {
            text.push_str("[api]\naccess_key = \"AK\"\n[[sink]]\ntype = \"stdout\"\n");
        }
    }
    let path = PathBuf::from("big.toml");
    let whole = super::split::split_watches_above(&text, &path, usize::MAX).unwrap();
    let chunked = super::split::split_watches_above(&text, &path, 0).unwrap();
    assert_eq!(chunked.1.len(), 50);
    assert_eq!(whole.1, chunked.1, "same watches");
    // Read as it is parsed (a large file), the same again.
    let streamed = super::split::split_watches_streamed(text.as_bytes(), &path).unwrap();
    assert_eq!(streamed, chunked, "same rest and watches, read as parsed");
    let whole_rest: toml::Table = toml::from_str(&whole.0).unwrap();
    let chunked_rest: toml::Table = toml::from_str(&chunked.0).unwrap();
    assert_eq!(
        whole_rest, chunked_rest,
        "same rest, sinks from both sides in order"
    );
    assert_eq!(chunked_rest["sink"].as_array().unwrap().len(), 2);

    // A broken table in a big file: named by its index and the file.
    let broken = text.replacen("asset_id = \"33\"", "asset_id = 33\ncolour = \"red\"", 1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.toml");
    let mut padded = broken.clone();
    padded.push_str(&format!(
        "# {}\n",
        "x".repeat(super::split::CHUNKED_ABOVE_BYTES)
    ));
    std::fs::write(&file, &padded).unwrap();
    let s = file_with_creds(&file);
    let e = load(&s).unwrap_err().to_string();
    assert!(e.contains("watch[33].colour: unknown key"), "{e}");
    // Placed by line in the large file too (the 34th watch of the file, in its own piece).
    assert!(e.contains(&format!("(in {}:", file.display())), "{e}");
    // A duplicate key across pieces is still an error.
    let dup = format!("{padded}[api]\ntimeout = \"5s\"\n");
    std::fs::write(&file, dup).unwrap();
    let e = load(&s).unwrap_err().to_string();
    assert!(e.contains("duplicate key `api`"), "{e}");
}

/// Broken lines holding a secret, each as the parser meets it: unterminated, unquoted, a bad
/// escape inside the quotes, a second `=`.
const LEAKY_LINES: &[&str] = &[
    "secret_key = \"SK_LEAKED_VALUE",
    "secret_key = SK_LEAKED_VALUE",
    "secret_key = \"SK_LEAKED\\qVALUE\"",
    "secret_key = \"SK_LEAKED_VALUE\" = 1",
    "secret_key = 'SK_LEAKED_VALUE",
    "SK_LEAKED_VALUE",
];

/// The problems of `text` at `path`: exactly one, naming the file, the line and a column, and
/// never the secret.
fn syntax_problem(sources: &Sources, file: &str, line: usize) -> String {
    let e = match load(sources) {
        Ok(_) => panic!("a broken file loaded"),
        Err(e) => e,
    };
    let text = e.to_string();
    assert!(!text.contains("SK_LEAKED"), "the secret is echoed:\n{text}");
    assert!(!text.contains('|'), "a quoted source line:\n{text}");
    assert!(text.contains(file), "{text}");
    assert!(
        text.contains(&format!("not valid TOML at line {line}, column ")),
        "{text}"
    );
    text
}

#[test]
fn toml_syntax_errors_name_file_line_and_column_but_never_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let env = || {
        Some(
            CREDS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    for leaky in LEAKY_LINES {
        // The main file, small: parsed whole.
        let main = dir.path().join("scenewatch.toml");
        std::fs::write(&main, format!("[api]\naccess_key = \"AK\"\n{leaky}\n")).unwrap();
        let sources = Sources {
            file: Some(main.clone()),
            env: env(),
            ..Sources::default()
        };
        let t = syntax_problem(&sources, &main.display().to_string(), 3);
        assert!(t.contains("(file)"), "{t}");

        // Inline (the demo, tests).
        let s = inline(&format!("[api]\n{leaky}\n"), CREDS);
        syntax_problem(&s, "test.toml", 2);

        // A big file, parsed one [[watch]] table at a time: the line counts from the top of
        // the file, not of the piece.
        let mut big = String::from("[api]\naccess_key = \"AK\"\n");
        let watch = "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
        big.push_str(watch);
        big.push_str(&format!(
            "# {}\n",
            "x".repeat(super::split::CHUNKED_ABOVE_BYTES)
        ));
        big.push_str(watch);
        let line = big.matches('\n').count() + 1;
        big.push_str(&format!("{leaky}\n"));
        std::fs::write(&main, &big).unwrap();
        syntax_problem(&sources, &main.display().to_string(), line);

        // A file of the watch directory.
        let wd = dir.path().join("watches.d");
        std::fs::create_dir_all(&wd).unwrap();
        std::fs::write(
            wd.join("a.toml"),
            format!("workspace = \"w\"\nproject_id = \"1\"\n\n{leaky}\n"),
        )
        .unwrap();
        std::fs::write(&main, format!("watch_dir = \"{}\"\n", wd.display())).unwrap();
        let t = syntax_problem(&sources, &wd.join("a.toml").display().to_string(), 4);
        assert!(t.contains("watch[0]"), "{t}");
    }
}

#[test]
fn columns_count_characters_and_lines_count_from_the_piece_start() {
    let text = "a = 1\nb = \"장면\" x\n";
    let e = toml::from_str::<toml::Table>(text).unwrap_err();
    assert_eq!(
        super::split::describe_toml_error(&e, text, 0)
            .split(':')
            .next(),
        Some("not valid TOML at line 2, column 10")
    );
    assert!(
        super::split::describe_toml_error(&e, text, 40)
            .starts_with("not valid TOML at line 42, column 10")
    );
}

#[test]
fn environment_values_are_never_parsed_as_toml_nor_echoed() {
    // Values from the environment are strings: a broken TOML line there is just a value, and a
    // wrong type for a key is named without it.
    let ps = problems(
        "",
        &[
            ("SCENEWATCH__API__ACCESS_KEY", "AK"),
            ("SCENEWATCH__API__SECRET_KEY", "\"SK_LEAKED_VALUE"),
            ("SCENEWATCH__POLL__CONCURRENCY", "SK_LEAKED_VALUE = \"x"),
        ],
    );
    assert!(!ps.is_empty());
    for p in &ps {
        assert!(!p.to_string().contains("SK_LEAKED"), "{p}");
    }
}

/// The three shapes of a watch: an index, an asset's latest index, every asset of a project; on
/// `generation = "auto"` unless said otherwise.
#[test]
fn watches_name_an_index_an_asset_or_a_project() {
    let c = load(&inline(
        r#"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "2"
index_id = "3"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "4"
generation = "asset"
max_wait = "2h"
[[watch]]
workspace = "w"
project_id = "9"
"#,
        CREDS,
    ))
    .expect("valid");
    assert_eq!(c.api.generation, GenerationChoice::Auto);
    assert_eq!(c.watches.len(), 1);
    assert_eq!(c.watches[0].generation, GenerationChoice::Auto);
    assert_eq!(c.watches[0].origin, None);
    let origins: Vec<String> = c.selectors.iter().map(Selector::origin).collect();
    assert_eq!(origins, ["asset:w/1/4", "project:w/9"]);
    assert_eq!(c.selectors[0].generation, GenerationChoice::Asset);
    assert_eq!(
        c.selectors[0].max_wait,
        std::time::Duration::from_secs(7200)
    );
    assert_eq!(
        c.poll.discovery_interval,
        std::time::Duration::from_secs(300)
    );
    let found = c.selectors[1].spec_for(crate::domain::WatchKey::new("w", "9", "5", "6").unwrap());
    assert_eq!(found.origin.as_deref(), Some("project:w/9"));
    assert!(
        found.declared_at.to_string().contains("watch[2]"),
        "{}",
        found.declared_at
    );
}

/// What does not name one of the three shapes is refused, saying what to change.
#[test]
fn ambiguous_watches_are_refused_with_what_to_change() {
    let p = problems(
        r#"
[[watch]]
workspace = "w"
project_id = "1"
index_id = "3"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "2"
scene_summary_id = "77"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "2"
generation = "index"
[[watch]]
workspace = "w"
project_id = "5"
[[watch]]
workspace = "w"
project_id = "5"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "8"
index_id = "3"
generation = "latest"
"#,
        CREDS,
    );
    let at = |key: &str| {
        p.iter()
            .find(|x| x.key == key)
            .map(|x| x.message.clone())
            .unwrap_or_else(|| panic!("no problem at {key}: {p:?}"))
    };
    assert!(at("watch[0].index_id").contains("needs asset_id"));
    assert!(at("watch[1].scene_summary_id").contains("give index_id too"));
    assert!(at("watch[2].generation").contains("needs index_id"));
    assert!(at("watch[4]").contains("watches project w/5 again"));
    assert!(at("watch[5].generation").contains("\"auto\", \"index\" or \"asset\""));
    assert_eq!(p.len(), 5, "{p:?}");
}

/// `env` plus the credentials.
fn with_creds<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    CREDS.iter().copied().chain(env.iter().copied()).collect()
}

#[test]
fn arrays_of_tables_are_overridden_and_extended_by_index_from_the_environment() {
    let toml = "[[sink]]\ntype = \"file\"\ndir = \"/from/file\"\n[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
    let c = load(&inline(
        toml,
        &with_creds(&[
            ("SCENEWATCH__SINK__0__DIR", "/from/env"),
            ("SCENEWATCH__SINK__1__TYPE", "jsonl"),
            ("SCENEWATCH__SINK__1__PATH", "/tmp/r.jsonl"),
            ("SCENEWATCH__WATCH__0__ASSET_ID", "20"),
            ("SCENEWATCH__WATCH__1__WORKSPACE", "w"),
            ("SCENEWATCH__WATCH__1__PROJECT_ID", "9"),
        ]),
    ))
    .expect("valid");
    match &c.sinks[..] {
        [SinkConfig::File(f), SinkConfig::Jsonl(j)] => {
            assert_eq!(f.dir, PathBuf::from("/from/env"));
            assert_eq!(j.path, PathBuf::from("/tmp/r.jsonl"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.watches.len(), 1);
    assert_eq!(c.watches[0].key.to_string(), "w/1/20/3");
    assert_eq!(
        c.selectors.len(),
        1,
        "the project watch added from the environment"
    );
}

#[test]
fn problems_in_overridden_tables_name_the_variable() {
    let toml = "[[sink]]\ntype = \"jsonl\"\npath = \"/tmp/r.jsonl\"\n[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
    let ps = problems(
        toml,
        &with_creds(&[
            ("SCENEWATCH__SINK__0__MAX_BYTES", "lots"),
            ("SCENEWATCH__SINK__3__DIR", "/x"),
            ("SCENEWATCH__WATCH__0__WORKSPACE", "a b"),
            ("SCENEWATCH__WATCH__0__COLOUR", "blue"),
            ("SCENEWATCH__SINK__0", "x"),
        ]),
    );
    let text: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("sink[0].max_bytes: wrong type")
            && has("from environment variable SCENEWATCH__SINK__0__MAX_BYTES"),
        "{text:#?}"
    );
    assert!(
        has(
            "sink[3]: there is 1 [[sink]] table (from 0), so the next new one is 1 (from environment variable SCENEWATCH__SINK__3__DIR)"
        ),
        "{text:#?}"
    );
    assert!(
        has("watch[0].workspace: \"a b\" contains ' '")
            && has("(from environment variable SCENEWATCH__WATCH__0__WORKSPACE)"),
        "{text:#?}"
    );
    assert!(
        has(
            "watch[0].colour: unknown key (from environment variable SCENEWATCH__WATCH__0__COLOUR)"
        ),
        "{text:#?}"
    );
    assert!(
        has("sink[0]: name a key of the table: SCENEWATCH__SINK__0__KEY"),
        "{text:#?}"
    );
    // The keys the file set keep the file as their origin.
    let c = load(&inline(
        toml,
        &with_creds(&[("SCENEWATCH__WATCH__0__INDEX_ID", "4")]),
    ))
    .expect("valid");
    assert_eq!(c.watches[0].key.to_string(), "w/1/2/4");
}

#[test]
fn list_keys_take_commas_or_a_json_array_from_the_environment() {
    for (value, want) in [
        ("3001, 3002,", vec!["3001", "3002"]),
        ("[\"3001\",\"30,02\"]", vec!["3001", "30,02"]),
        ("", vec![]),
    ] {
        let c = load(&inline(
            "",
            &with_creds(&[("SCENEWATCH__API__PENDING_CODES", value)]),
        ))
        .expect("valid");
        assert_eq!(c.api.pending_codes, want, "{value:?}");
    }
}

#[test]
fn a_syntax_error_stops_its_file_only_and_the_environment_is_still_checked() {
    let ps = problems(
        "[api]\naccess_key = \"AK\nsecret_key = \"S\"\n",
        &[("SCENEWATCH__POLL__CONCURENCY", "8")],
    );
    let text: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("not valid TOML at line 2")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("poll.concurency: unknown key (did you mean `concurrency`?) (from environment variable SCENEWATCH__POLL__CONCURENCY)")),
        "{text:#?}"
    );
    // Nothing it holds is reported missing: the file was not read.
    assert!(!text.iter().any(|t| t.contains("missing")), "{text:#?}");
}

#[test]
fn state_retention_defaults_to_30_days_and_is_checked_from_file_and_environment() {
    let watch =
        "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
    let c = load(&inline(watch, CREDS)).expect("valid");
    assert_eq!(c.retention, std::time::Duration::from_secs(30 * 86_400));
    let c = load(&inline(
        &format!("[state]\nretention = \"7d\"\n{watch}"),
        CREDS,
    ))
    .expect("valid");
    assert_eq!(c.retention, std::time::Duration::from_secs(7 * 86_400));
    let mut env = CREDS.to_vec();
    env.push(("SCENEWATCH__STATE__RETENTION", "90d"));
    let c = load(&inline(watch, &env)).expect("valid");
    assert_eq!(c.retention, std::time::Duration::from_secs(90 * 86_400));

    let text = |ps: Vec<Problem>| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let t = text(problems(
        &format!("[state]\nretention = \"a month\"\n{watch}"),
        CREDS,
    ));
    assert!(
        t.iter().any(
            |l| l.contains("state.retention: \"a month\" is not a duration")
                && l.contains("test.toml")
        ),
        "{t:#?}"
    );
    let t = text(problems(
        &format!("[state]\nretention = \"10m\"\n{watch}"),
        CREDS,
    ));
    assert!(
        t.iter()
            .any(|l| l.contains("state.retention: 10m is shorter than the minimum of 1h")),
        "{t:#?}"
    );
    let mut env = CREDS.to_vec();
    env.push(("SCENEWATCH__STATE__RETENTION", "0s"));
    let t = text(problems(watch, &env));
    assert!(
        t.iter()
            .any(|l| l.contains("state.retention: must be longer than zero")
                && l.contains("SCENEWATCH__STATE__RETENTION")),
        "{t:#?}"
    );
    let t = text(problems(
        &format!("[state]\nretension = \"3d\"\n{watch}"),
        CREDS,
    ));
    assert!(
        t.iter()
            .any(|l| l.contains("state.retension: unknown key (did you mean `retention`?)")),
        "{t:#?}"
    );
}

#[cfg(unix)]
#[test]
fn a_secret_file_that_never_ends_is_refused_not_read_forever() {
    let watch =
        "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
    let ps = problems(
        &format!("[api]\naccess_key = \"AK\"\nsecret_key_file = \"/dev/zero\"\n{watch}"),
        &[],
    );
    let text: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("api.secret_key_file")
            && t.contains("larger than 64 KiB, so not a secret file")),
        "{text:#?}"
    );
}

#[cfg(not(feature = "postgres"))]
#[test]
fn without_the_postgres_feature_a_postgres_ledger_is_refused_naming_the_feature() {
    let toml = "[state]\nbackend = \"postgres\"\nurl = \"postgres://sw:pw@db/x\"\n[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
    let t: Vec<String> = problems(toml, CREDS)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        t.iter().any(|l| l.contains("state.backend")
            && l.contains("cargo feature \"postgres\"")
            && l.contains("--features postgres")),
        "{t:#?}"
    );
    assert!(t.iter().all(|l| !l.contains("pw@")), "{t:#?}");
}

#[cfg(feature = "postgres")]
#[test]
fn state_backend_defaults_to_sqlite_and_postgres_keys_are_checked_by_name() {
    let watch =
        "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
    let c = load(&inline(watch, CREDS)).expect("valid");
    assert!(matches!(c.ledger, crate::state::Backend::Sqlite));

    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pgpass");
    std::fs::write(&pw, "s3cret-ledger-pw\n").unwrap();
    let toml = format!(
        "[state]\nbackend = \"postgres\"\nurl = \"postgres://sw@db.example:5432/media?sslmode=require\"\npassword_file = \"{}\"\nschema = \"team_a\"\n{watch}",
        pw.display()
    );
    let c = load(&inline(&toml, CREDS)).expect("valid");
    let crate::state::Backend::Postgres(t) = &c.ledger else {
        panic!("{:?}", c.ledger)
    };
    assert_eq!(t.url, "postgres://sw@db.example:5432/media?sslmode=require");
    assert_eq!(t.schema, "team_a");
    use secrecy::ExposeSecret as _;
    assert_eq!(
        t.password.as_ref().map(|p| p.expose_secret().to_string()),
        Some("s3cret-ledger-pw".into())
    );
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug hides the password"
    );

    // In the URL: taken out of it, and never shown.
    let mut env = CREDS.to_vec();
    env.push(("SCENEWATCH__STATE__BACKEND", "postgres"));
    env.push((
        "SCENEWATCH__STATE__URL",
        "postgres://sw:in-url-pw@db.example/media",
    ));
    let c = load(&inline(watch, &env)).expect("valid");
    let crate::state::Backend::Postgres(t) = &c.ledger else {
        panic!("{:?}", c.ledger)
    };
    assert_eq!(t.url, "postgres://sw@db.example/media");
    assert_eq!(t.schema, "scenewatch", "the default schema");
    assert_eq!(t.replicated, None, "one daemon unless replicated");
    // Replicas, from the environment as a container sets them: the default lease.
    env.push(("SCENEWATCH__STATE__REPLICATED", "true"));
    let c = load(&inline(watch, &env)).expect("valid");
    let crate::state::Backend::Postgres(r) = &c.ledger else {
        panic!("{:?}", c.ledger)
    };
    assert_eq!(r.replicated, Some(std::time::Duration::from_secs(15)));
    env.pop();
    assert!(!format!("{c:?}").contains("in-url-pw"));

    let text = |ps: Vec<Problem>| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    for (state, want) in [
        (
            "backend = \"mysql\"",
            "state.backend: \"mysql\" is not a ledger backend",
        ),
        ("backend = \"postgres\"", "state.url: missing"),
        (
            "backend = \"postgres\"\nurl = \"mysql://db/x\"",
            "state.url: scheme \"mysql\" is not supported",
        ),
        (
            "backend = \"postgres\"\nurl = \"postgres://db/x\"\nschema = \"Team-A\"",
            "state.schema: \"Team-A\" is not a plain identifier",
        ),
        (
            "backend = \"postgres\"\nurl = \"postgres://db/x\"\npassword_env = \"SW_SURELY_UNSET_PG_PW\"",
            "state.password_env: environment variable SW_SURELY_UNSET_PG_PW is not set",
        ),
        (
            "url = \"postgres://db/x\"",
            "state.url: is for backend = \"postgres\", but state.backend is \"sqlite\"",
        ),
        (
            "replicated = true",
            "state.replicated: replicas share a PostgreSQL ledger",
        ),
        (
            "backend = \"postgres\"\nurl = \"postgres://db/x\"\nreplicated = true\nlease = \"1s\"",
            "state.lease: 1s is outside 3s..5m",
        ),
        (
            "backend = \"postgres\"\nurl = \"postgres://db/x\"\nreplicated = true\nlease = \"soon\"",
            "state.lease",
        ),
    ] {
        let t = text(problems(&format!("[state]\n{state}\n{watch}"), CREDS));
        assert!(t.iter().any(|l| l.contains(want)), "{state}: {t:#?}");
    }
    let t = text(problems(
        &format!(
            "[state]\nbackend = \"postgres\"\nurl = \"postgres://u:leaky-pw@db/x\"\npassword_file = \"{}\"\n{watch}",
            pw.display()
        ),
        CREDS,
    ));
    assert!(
        t.iter()
            .any(|l| l.contains("state.url: has a password and password_file")),
        "{t:#?}"
    );
    assert!(!t.iter().any(|l| l.contains("leaky-pw")), "{t:#?}");
}

#[test]
fn a_large_file_that_stops_being_readable_text_names_the_file_and_the_read() {
    // Read as it is parsed: bytes that are not UTF-8 half-way through are the same problem as a
    // file that cannot be read at all, named by its path, never quoted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.toml");
    let mut bytes = b"[api]\naccess_key = \"AK\"\n".to_vec();
    while bytes.len() <= super::split::CHUNKED_ABOVE_BYTES {
        bytes.extend_from_slice(
            b"[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n",
        );
    }
    bytes.extend_from_slice(b"# \xff\xfe SK_NOT_SHOWN\n");
    std::fs::write(&file, &bytes).unwrap();
    let s = file_with_creds(&file);
    let e = load(&s).unwrap_err().to_string();
    assert!(e.contains("cannot read the configuration file"), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(!e.contains("SK_NOT_SHOWN"), "{e}");
}

#[test]
fn raw_texts_hold_short_ones_in_place_and_read_back_any_length() {
    for text in [
        "",
        "1",
        "newsroom",
        &"x".repeat(22),
        &"y".repeat(23),
        &"é".repeat(40),
    ] {
        let raw = RawText::from(text);
        assert_eq!(raw.as_str(), text);
        assert_eq!(RawText::from(text.to_string()), raw);
        assert_eq!(format!("{raw}"), text);
        assert_eq!(format!("{raw:?}"), format!("{text:?}"));
    }
    assert_eq!(size_of::<RawText>(), size_of::<String>());
    // Read from TOML and written back as the same string.
    let w: RawWatch = toml::from_str(
        "workspace = \"newsroom\"\nproject_id = \"1\"\nasset_id = \"an-asset-id-longer-than-22\"\nindex_id = \"3\"\n",
    )
    .unwrap();
    assert_eq!(w.workspace, "newsroom");
    assert_eq!(w.asset_id, "an-asset-id-longer-than-22");
    let back: RawWatch = toml::from_str(&toml::to_string(&w).unwrap()).unwrap();
    assert_eq!(back, w);
    // Not a string: the key's problem, as before.
    let e = toml::from_str::<RawWatch>("workspace = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("a string"), "{e}");
}

/// `file` as the configuration file, with [`CREDS`] as the whole environment.
fn file_with_creds(file: &std::path::Path) -> Sources {
    Sources {
        file: Some(file.to_path_buf()),
        env: Some(
            CREDS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Sources::default()
    }
}
