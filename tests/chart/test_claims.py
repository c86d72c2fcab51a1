"""The claim policy in the chart: `config.claims` becomes the issuer's IDP_CLAIMS_FILE.

The rendered file is read back with the issuer's own loader, so the chart cannot hand the pods
a policy other than the one written in the values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from idp.config import load_settings
from idp.errors import ConfigError
from idp.tokens.claims_file import (
    CLAIM_KEYS,
    CLAIM_NAME,
    MAX_LENGTH_LIMIT,
    RULE_KEYS,
    TOP_KEYS,
    load_claims_file,
)
from idp.tokens.vocabulary import (
    BUILTIN_FIELDS,
    DEFAULT_SUBJECT_CLAIMS,
    NEVER_OPTIONAL,
    ClaimPolicy,
)
from tests.chart.conftest import CHART_DIR, RELEASE, Rendered, chart_file, render
from tests.chart.test_chart import KUBE_VERSIONS, issuer_environment, volume_named
from tests.support import ROOT

EXAMPLES = ROOT / "docs" / "examples"
OCTOPUS = EXAMPLES / "claims-octopus.yaml"
CLAIMS_FILE = "/etc/idp/claims/claims.yaml"


def example(path: Path) -> dict[str, Any]:
    policy: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return policy


def with_policy(policy: Any, **config: Any) -> dict[str, Any]:
    return {"config": {"claims": policy, **config}}


def annotations(rendered: Rendered) -> dict[str, str]:
    found: dict[str, str] = rendered.issuer["spec"]["template"]["metadata"]["annotations"]
    return found


def comparable(policy: ClaimPolicy) -> dict[str, Any]:
    """What a policy decides. Helm's values are Go maps, so toYaml writes their keys sorted:
    the declared claims' order (a listing order only) and a rule's globs (all must match)
    may come back in another order."""
    return {
        "fields": dict(policy.fields),
        "identity": policy.identity,
        "session_tags": policy.session_tags,
        "subjects": [(r.number, r.claims, sorted(r.match)) for r in policy.subjects],
    }


@pytest.fixture(scope="module")
def octopus_render() -> Rendered:
    return render(with_policy(example(OCTOPUS)))


# --- rendering -----------------------------------------------------------------------------


def test_the_octopus_example_reaches_the_pods_as_the_same_policy(
    octopus_render: Rendered, tmp_path: Path
) -> None:
    text = octopus_render.one("ConfigMap", f"{RELEASE}-claims")["data"]["claims.yaml"]
    rendered = tmp_path / "claims.yaml"
    rendered.write_text(text, encoding="utf-8")
    expected = comparable(load_claims_file(str(OCTOPUS)))
    assert comparable(load_claims_file(str(rendered))) == expected
    # and the issuer, started with the pod's environment and files, reads that file
    settings = load_settings(issuer_environment(octopus_render, tmp_path))
    assert settings.claim_policy.source is not None
    assert settings.claim_policy.source.endswith(CLAIMS_FILE)
    assert comparable(settings.claim_policy) == expected
    assert settings.claim_policy.identity == ("space", "project")


def test_the_policy_file_is_mounted_read_only_and_named_by_idp_claims_file(
    octopus_render: Rendered,
) -> None:
    assert octopus_render.config["IDP_CLAIMS_FILE"] == CLAIMS_FILE
    (mount,) = [m for m in octopus_render.container["volumeMounts"] if m["name"] == "claims"]
    assert mount == {"name": "claims", "mountPath": "/etc/idp/claims", "readOnly": True}
    assert volume_named(octopus_render, "claims")["configMap"] == {
        "name": f"{RELEASE}-claims",
        "items": [{"key": "claims.yaml", "path": "claims.yaml"}],
    }
    # Not in the settings ConfigMap: envFrom would offer `claims.yaml` as a variable.
    assert "claims.yaml" not in octopus_render.config


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_a_policy_render_validates_against_the_kubernetes_schemas(
    octopus_render: Rendered, version: str
) -> None:
    for manifest in octopus_render.manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("values", [{}, with_policy({}), with_policy(None)], ids=str)
def test_no_policy_no_claims_file(values: dict[str, Any]) -> None:
    rendered = render(values)
    assert "IDP_CLAIMS_FILE" not in rendered.config
    assert rendered.find("ConfigMap", f"{RELEASE}-claims") is None
    assert "claims" not in {m["name"] for m in rendered.container["volumeMounts"]}
    volumes = rendered.issuer["spec"]["template"]["spec"]["volumes"]
    assert "claims" not in {v["name"] for v in volumes}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("claims-*.yaml")), ids=lambda p: p.name)
def test_every_example_policy_renders_and_the_issuer_accepts_it(path: Path, tmp_path: Path) -> None:
    settings = load_settings(issuer_environment(render(with_policy(example(path))), tmp_path))
    assert comparable(settings.claim_policy) == comparable(load_claims_file(str(path)))


def test_values_yaml_would_read_as_something_else_stay_strings(tmp_path: Path) -> None:
    """toYaml quotes what YAML 1.1 (the issuer's reader) would turn into a bool, number, null."""
    tricky = ["yes", "no", "on", "off", "y", "1", "0x10", "1e3", "null", "~", "true", "0755"]
    policy = {"claims": {"tier": {"values": tricky}, "tenant": {"max_length": 64}}}
    settings = load_settings(issuer_environment(render(with_policy(policy)), tmp_path))
    assert settings.claim_policy.fields["tier"].values == tuple(tricky)
    assert settings.claim_policy.fields["tenant"].max_length == 64


def test_a_policy_change_rolls_the_pods(octopus_render: Rendered) -> None:
    changed = example(OCTOPUS)
    changed["claims"]["environment"]["values"].append("staging")
    before = annotations(octopus_render)["checksum/config"]
    assert annotations(render(with_policy(changed)))["checksum/config"] != before
    assert annotations(render())["checksum/config"] != before
    # the same policy, the same checksum: an upgrade without a change rolls nothing
    assert annotations(render(with_policy(example(OCTOPUS))))["checksum/config"] == before


# --- your own ConfigMap --------------------------------------------------------------------


def test_an_existing_config_map_is_mounted_instead(tmp_path: Path) -> None:
    values = {
        "config": {
            "claimsExistingConfigMap": {"name": "deploy-claims", "key": "octopus.yaml"},
            "subjectClaims": ["space", "project"],
        }
    }
    rendered = render(values)
    assert rendered.find("ConfigMap", f"{RELEASE}-claims") is None
    assert rendered.config["IDP_CLAIMS_FILE"] == CLAIMS_FILE
    assert volume_named(rendered, "claims")["configMap"] == {
        "name": "deploy-claims",
        "items": [{"key": "octopus.yaml", "path": "claims.yaml"}],
    }
    external = {("deploy-claims", "octopus.yaml"): OCTOPUS.read_text(encoding="utf-8")}
    settings = load_settings(issuer_environment(rendered, tmp_path, external))
    assert settings.claim_policy.identity == ("space", "project")
    assert settings.subject_claims == ("space", "project")
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, KUBE_VERSIONS[-1], strict=True)


def test_the_policy_and_an_existing_config_map_together_are_refused() -> None:
    values = with_policy(example(OCTOPUS), claimsExistingConfigMap={"name": "deploy-claims"})
    with pytest.raises(helm.HelmRenderError, match="config.claims and config.claimsExisting"):
        render(values)


def test_idp_claims_file_in_extra_is_refused_with_a_policy() -> None:
    values = with_policy(example(OCTOPUS), extra={"IDP_CLAIMS_FILE": "/elsewhere.yaml"})
    with pytest.raises(helm.HelmRenderError, match="remove config.extra.IDP_CLAIMS_FILE"):
        render(values)


# --- subjectClaims and awsSessionTags with a policy ----------------------------------------

RULES_ALL_MATCH = {
    "identity": ["space", "project"],
    "claims": {
        "space": {"required": True},
        "project": {"required": True},
        "team": {},
    },
    "subjects": [{"match": {"space": "prod"}, "claims": ["space", "project", "environment"]}],
}


@pytest.mark.parametrize(
    ("policy", "config", "refused"),
    [
        # A rule without match applies to all: IDP_SUBJECT_CLAIMS is never used.
        pytest.param(example(OCTOPUS), {}, False, id="octopus-default-subject-claims"),
        pytest.param(RULES_ALL_MATCH, {}, True, id="identity-not-first"),
        pytest.param(
            RULES_ALL_MATCH,
            {"subjectClaims": ["space", "project", "team"], "awsSessionTags": ["team"]},
            False,
            id="declared-claims-after-the-identity",
        ),
        pytest.param(
            RULES_ALL_MATCH, {"subjectClaims": ["project", "space"]}, True, id="identity-reordered"
        ),
        pytest.param(RULES_ALL_MATCH, {"subjectClaims": ["space"]}, True, id="identity-cut"),
        pytest.param(example(EXAMPLES / "claims-github.yaml"), {}, False, id="github-repo-first"),
        pytest.param(
            example(EXAMPLES / "claims-github.yaml"),
            {"subjectClaims": ["ref", "repo"]},
            True,
            id="github-repo-second",
        ),
    ],
)
def test_subject_claims_start_with_the_identity_as_the_issuer_requires(
    policy: dict[str, Any], config: dict[str, Any], refused: bool, tmp_path: Path
) -> None:
    values = with_policy(policy, **config)
    if refused:
        with pytest.raises(helm.HelmRenderError, match="must start with config.claims.identity"):
            render(values)
        # the issuer would refuse it too: render without the chart's check to see it
        # and the issuer, given the same file and IDP_SUBJECT_CLAIMS, refuses it too
        path = tmp_path / "claims.yaml"
        path.write_text(yaml.safe_dump(policy), encoding="utf-8")
        subject = config.get("subjectClaims", DEFAULT_SUBJECT_CLAIMS)
        env = {"IDP_CLAIMS_FILE": str(path), "IDP_SUBJECT_CLAIMS": ",".join(subject)}
        with pytest.raises(ConfigError, match="IDP_SUBJECT_CLAIMS"):
            load_settings(env)
    else:
        load_settings(issuer_environment(render(values), tmp_path))


def test_without_a_policy_subject_claims_still_start_with_repo() -> None:
    for config in ({"subjectClaims": ["space", "project"]}, {"awsSessionTags": ["team"]}):
        with pytest.raises(helm.HelmValuesError):
            render({"config": config})


# --- the schema ------------------------------------------------------------------------------

BAD_POLICIES = [
    pytest.param({"subjects": "x"}, id="subjects-string"),
    pytest.param({"sessionTags": ["project"]}, id="unknown-top-level-key"),
    pytest.param({"identity": "space"}, id="identity-string"),
    pytest.param({"identity": ["space", "space"]}, id="identity-repeated"),
    pytest.param({"optional": ["build_id"]}, id="build-id-optional"),
    pytest.param({"optional": ["space"]}, id="optional-not-built-in"),
    pytest.param({"claims": ["space"]}, id="claims-list"),
    pytest.param({"claims": {"space": {"kind": "string"}}}, id="kind-unknown"),
    pytest.param({"claims": {"space": {"type": "text"}}}, id="claim-key-unknown"),
    pytest.param({"claims": {"space": {"required": "yes"}}}, id="required-string"),
    pytest.param({"claims": {"space": {"max_length": "64"}}}, id="max-length-string"),
    pytest.param({"claims": {"space": {"max_length": 0}}}, id="max-length-zero"),
    pytest.param({"claims": {"space": {"max_length": 5000}}}, id="max-length-above-limit"),
    pytest.param({"claims": {"space": {"values": []}}}, id="values-empty"),
    pytest.param({"claims": {"space": {"values": [True]}}}, id="values-unquoted-yes"),
    pytest.param({"claims": {"space": {"pattern": ""}}}, id="pattern-empty"),
    pytest.param({"claims": {"ok": {"kind": "bool", "values": ["true"]}}}, id="bool-values"),
    pytest.param({"claims": {"ok": {"kind": "bool", "pattern": "t.*"}}}, id="bool-pattern"),
    pytest.param({"claims": {"n": {"kind": "id", "max_length": 9}}}, id="id-max-length"),
    pytest.param({"claims": {"my-claim": {}}}, id="claim-name"),
    pytest.param({"subjects": [{"match": {"repo": "a/*"}}]}, id="rule-without-claims"),
    pytest.param({"subjects": [{"claims": ["repo"], "when": {}}]}, id="rule-key-unknown"),
    pytest.param({"subjects": [{"claims": "repo"}]}, id="rule-claims-string"),
    pytest.param({"subjects": [{"claims": ["repo"], "match": {"event": ""}}]}, id="glob-empty"),
    pytest.param({"subjects": [{"claims": ["repo"], "match": {"event": 1}}]}, id="glob-number"),
    pytest.param({"session_tags": [["project"]]}, id="session-tags-nested"),
    pytest.param("identity: [space]", id="policy-as-a-string"),
]


@pytest.mark.parametrize("policy", BAD_POLICIES)
def test_the_schema_refuses_a_policy_of_the_wrong_shape(policy: Any, tmp_path: Path) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(with_policy(policy))
    # and the issuer's loader refuses it too: the schema is never stricter than the issuer
    path = tmp_path / "claims.yaml"
    path.write_text(policy if isinstance(policy, str) else json.dumps(policy), encoding="utf-8")
    if not isinstance(policy, str):
        with pytest.raises(ConfigError):
            load_claims_file(str(path))


@pytest.mark.parametrize(
    "values",
    [
        {"claimsExistingConfigMap": {"name": "Deploy_Claims"}},
        {"claimsExistingConfigMap": {"name": "deploy-claims", "key": "a/b.yaml"}},
        {"claimsExistingConfigMap": {"name": "deploy-claims", "file": "b.yaml"}},
    ],
    ids=["name", "key", "unknown-key"],
)
def test_the_schema_refuses_a_bad_existing_config_map(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"config": values})


def test_the_schema_follows_the_loader() -> None:
    """The schema's keys and limits are the loader's; what it cannot see (a regular expression
    that does not compile, a registered claim name, a rule naming an undeclared claim) the
    issuer refuses at start-up."""
    schema = json.loads(chart_file("values.schema.json").read_text(encoding="utf-8"))
    policy = schema["definitions"]["claimPolicy"]
    assert tuple(policy["properties"]) == TOP_KEYS
    assert policy["additionalProperties"] is False
    spec = schema["definitions"]["claimSpec"]
    assert tuple(spec["properties"]) == CLAIM_KEYS
    assert spec["properties"]["max_length"]["maximum"] == MAX_LENGTH_LIMIT
    rule = policy["properties"]["subjects"]["items"]
    assert tuple(rule["properties"]) == RULE_KEYS
    optional = policy["properties"]["optional"]["items"]["enum"]
    assert optional == [name for name in BUILTIN_FIELDS if name not in NEVER_OPTIONAL]
    assert schema["definitions"]["claimName"]["pattern"] == f"^{CLAIM_NAME.pattern}$"
    assert "idp claims show" in policy["description"]


@pytest.mark.parametrize(
    "policy",
    [
        {"claims": {"sub": {}}},
        {"claims": {"space": {"pattern": "[a-z"}}},
        {"identity": ["space"], "subjects": [{"claims": ["space"]}]},
    ],
    ids=["registered-name", "bad-regex", "undeclared-identity"],
)
def test_what_only_the_issuer_can_check_passes_the_schema(
    policy: dict[str, Any], tmp_path: Path
) -> None:
    """The schema checks shapes; the issuer stops at start-up with one line naming the entry."""
    rendered = render(with_policy(policy))
    with pytest.raises(ConfigError, match=re.escape(CLAIMS_FILE)):
        load_settings(issuer_environment(rendered, tmp_path))


def test_the_chart_still_lints_with_a_policy() -> None:
    report = helm.lint(CHART_DIR, with_policy(example(OCTOPUS)), strict=True, namespace="ci")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_the_readmes_values_example_is_the_octopus_example(tmp_path: Path) -> None:
    """helm/README.md's `config.claims` block says what docs/examples' file says."""
    readme = chart_file("README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Claim policy\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    values = yaml.safe_load(block)
    assert values["config"]["claims"] == example(OCTOPUS)
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.merge_values(values))
