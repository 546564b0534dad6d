//! Unit tests of `local_ci.rs`.
use super::*;

const CI: &str = r#"
variables:
  GLOBAL: g
  DESC: {value: "d", description: "a described one"}
  RAWV: {value: "$X", expand: false}
default:
  image: isolated-runner/job:test
  before_script: [echo default-before]
.base: &base
  variables: {A: base, B: base}
  script: [echo base]
  artifacts: {paths: [out/], reports: {junit: report.xml}}
.other:
  variables: {B: other}
  timeout: 1h 30m
job1:
  extends: [.base, .other]
  variables: {A: job1}
  rules: [{if: '$CI'}]
job2:
  <<: *base
  image: {name: alpine, entrypoint: [""]}
  services:
    - busybox
    - {name: "isolated-runner/busybox:test", alias: "bb", command: ["sleep", "1"]}
  after_script: [echo after]
  allow_failure: true
  inherit: {default: false}
"#;

fn ctx() -> LocalContext {
    LocalContext {
        job_id: 7,
        token: Secret::new("glcbt-local-abcdef"),
        project_name: "demo".into(),
        commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        ref_name: Some("main".into()),
        config_path: ".gitlab-ci.yml".into(),
        checkout: None,
    }
}

fn var<'a>(p: &'a JobResponse, k: &str) -> Option<&'a JobVariable> {
    p.variables.iter().rev().find(|v| v.key == k)
}

#[test]
fn extends_default_and_variables() {
    let ci = parse(CI).expect("parse");
    assert_eq!(ci.job_names(), vec!["job1", "job2"]);
    let j = ci.build_payload("job1", &ctx()).expect("payload");
    let p = &j.payload;
    assert_eq!(p.steps[0].script, vec!["echo default-before", "echo base"]);
    assert_eq!(p.runner_info.timeout, 5400);
    assert_eq!(var(p, "A").map(|v| v.value.as_str()), Some("job1"));
    assert_eq!(var(p, "B").map(|v| v.value.as_str()), Some("other"));
    assert_eq!(var(p, "DESC").map(|v| v.value.as_str()), Some("d"));
    assert!(var(p, "RAWV").is_some_and(|v| v.raw));
    assert_eq!(
        var(p, "GIT_STRATEGY").map(|v| v.value.as_str()),
        Some("none")
    );
    assert!(var(p, "CI_JOB_TOKEN").is_some_and(|v| v.masked));
    assert_eq!(
        p.image.as_ref().map(|i| i.name.as_str()),
        Some("isolated-runner/job:test")
    );
    assert_eq!(p.artifacts.len(), 2);
    assert_eq!(p.artifacts[1].artifact_type, "junit");
    assert!(
        j.warnings.iter().any(|w| w.contains("`rules`")),
        "{:?}",
        j.warnings
    );
}

#[test]
fn anchors_merge_keys_images_services() {
    let ci = parse(CI).expect("parse");
    let j = ci.build_payload("job2", &ctx()).expect("payload");
    let p = &j.payload;
    assert_eq!(p.steps[0].script, vec!["echo base"]);
    assert!(p.steps[0].allow_failure);
    assert_eq!(p.steps[1].name, "after_script");
    let img = p.image.as_ref().expect("image");
    assert_eq!(img.name, "alpine");
    assert_eq!(img.entrypoint, Some(vec![String::new()]));
    assert_eq!(p.services.len(), 2);
    assert_eq!(p.services[1].alias, "bb");
    assert_eq!(p.services[1].command, vec!["sleep", "1"]);
}

#[test]
fn unknown_job_lists_names() {
    let ci = parse(CI).expect("parse");
    let e = ci.build_payload("nope", &ctx()).expect_err("unknown");
    assert!(e.to_string().contains("job1, job2"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("3600"), Some(3600));
    assert_eq!(parse_duration("1h 30m"), Some(5400));
    assert_eq!(parse_duration("2 hours"), Some(7200));
    assert_eq!(parse_duration("1 hour 30 minutes"), Some(5400));
    assert_eq!(parse_duration("10m"), Some(600));
    assert_eq!(parse_duration("soon"), None);
}
