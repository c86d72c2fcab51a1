"""The Helm chart, rendered and linted by Helm's own engine and checked against Kubernetes' schemas.

Every test renders the real chart in helm/ (see conftest.py); none of them edits YAML text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from idp.config import CONTEXT_CLAIMS, load_settings
from tests.chart.conftest import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    Manifest,
    Rendered,
    chart_file,
    containers,
    deep_merge,
    ha_values,
    render,
)

NO_REDIS = {"redis": {"bundled": {"enabled": False}}}
SINGLE_FILE_STORE = {"replicaCount": 1, **NO_REDIS}

# Kubernetes releases to validate against: the oldest the chart allows (Chart.yaml
# kubeVersion) and the newest whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.25", ".".join(latest_version().split(".")[:2])]
# Custom resources: no schema in kubernetes-validate; checked field by field below.
CUSTOM_KINDS = {"ServiceMonitor"}


def lint(values: dict[str, Any] | None) -> dict[str, Any]:
    report: dict[str, Any] = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    return report


def render_error(values: dict[str, Any]) -> str:
    """The message of the chart's `fail` (a render error, not a schema error)."""
    with pytest.raises(helm.HelmRenderError) as caught:
        render(values)
    return str(caught.value)


# --- lint and schemas --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "ha"])
def test_helm_lint_reports_nothing_above_info(which: str) -> None:
    report = lint(None if which == "default" else ha_values())
    assert report["errors"] == []
    # Strict lint: warnings count too. Info ("icon is recommended") is all that may remain.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_packages(tmp_path: Path) -> None:
    archive = Path(helm.package(CHART_DIR, destination=tmp_path))
    with helm.Chart.load(archive) as chart:
        assert archive.name == f"idp-{chart.version}.tgz"
        assert chart.schema is not None
        assert chart.render(None, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    each_render: Rendered, version: str
) -> None:
    assert len(each_render.manifests) >= 8
    for manifest in each_render.manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        # strict: unknown fields are errors, so a mis-indented key cannot slip through.
        kubernetes_validate.validate(manifest, version, strict=True)


VARIANTS = {
    "file-store-on-a-claim": {**SINGLE_FILE_STORE, "keysPersistence": {"enabled": True}},
    "bundled-redis-ephemeral": {"redis": {"bundled": {"persistence": {"enabled": False}}}},
    "redis-url-with-password": {"redis": {"url": "rediss://:pw@cache.internal:6380/0"}},
    "bare-origin-issuer-no-ingress-tls": {
        "issuer": "https://idp.example.com",
        "ingress": {"tls": {"enabled": False}},
        "podAntiAffinity": "none",
        "serviceAccount": {"create": False},
    },
    "platform-assigned-ids": {
        "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_other_shapes_validate_against_the_kubernetes_schemas(variant: str) -> None:
    rendered = render(VARIANTS[variant])
    for manifest in rendered.manifests:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_service_monitor_is_well_formed_and_scrapes_the_issuer(ha_render: Rendered) -> None:
    monitor = ha_render.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "http",
        "path": "/_services/token/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    service = ha_render.one("Service", RELEASE)
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert "http" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_default_install_has_no_service_monitor(default_render: Rendered) -> None:
    assert "ServiceMonitor" not in default_render.kinds()


BAD_VALUES = [
    pytest.param({"replicaCount": "2"}, id="replicaCount-string"),
    pytest.param({"replicaCount": 0}, id="replicaCount-zero"),
    pytest.param({"replicas": 2}, id="unknown-key"),
    pytest.param({"workers": "4"}, id="workers-string"),
    pytest.param({"issuer": 42}, id="issuer-number"),
    pytest.param({"ingress": {"enabled": "yes"}}, id="ingress-enabled-string"),
    pytest.param({"ingress": {"tls": {"enbled": True}}}, id="ingress-typo"),
    pytest.param({"config": {"tokenTTL": "300"}}, id="tokenTTL-string"),
    pytest.param({"config": {"signingAlg": "HS256"}}, id="signingAlg-not-for-aws"),
    pytest.param({"config": {"subjectClaims": ["ref", "repo"]}}, id="subject-not-repo-first"),
    pytest.param({"config": {"subjectClaims": "repo,ref"}}, id="subject-string"),
    pytest.param({"config": {"awsSessionTags": ["team"]}}, id="session-tag-unknown-claim"),
    pytest.param({"config": {"audiences": ["a,b"]}}, id="audience-with-comma"),
    pytest.param({"redis": {"url": "http://redis:6379"}}, id="redis-url-scheme"),
    pytest.param({"redis": {"bundled": {"password": "has space"}}}, id="redis-password"),
    pytest.param({"resources": {"limits": {"memory": "lots"}}}, id="resources-quantity"),
    pytest.param({"podAntiAffinity": "always"}, id="anti-affinity-enum"),
    pytest.param({"networkPolicy": {"enabled": 1}}, id="networkPolicy-int"),
    pytest.param({"autoscaling": {"maxReplicas": "10"}}, id="hpa-string"),
    pytest.param({"image": {"digest": "latest"}}, id="digest-format"),
    pytest.param({"config": {"extra": {"idp-clock-skew": "1"}}}, id="extra-env-name"),
]


@pytest.mark.parametrize("values", BAD_VALUES)
def test_values_schema_rejects_wrong_types(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    # and an install with them stops before rendering anything
    with pytest.raises(helm.HelmValuesError):
        render(values)


@pytest.mark.parametrize("which", ["default", "ha"])
def test_values_schema_accepts_the_shipped_values(which: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.merge_values(None if which == "default" else ha_values()))


def test_schema_claim_lists_match_the_issuers_claims() -> None:
    import json

    schema = json.loads(chart_file("values.schema.json").read_text(encoding="utf-8"))
    # Without a claim policy (config.claims), only the built-in claims exist.
    config = schema["properties"]["config"]["then"]["properties"]
    assert config["subjectClaims"]["additionalItems"]["enum"] == list(CONTEXT_CLAIMS)
    assert config["awsSessionTags"]["items"]["enum"] == list(CONTEXT_CLAIMS)


# --- the issuer's configuration ----------------------------------------------------------


def issuer_environment(
    rendered: Rendered, tmp_path: Path, external: dict[tuple[str, str], str] | None = None
) -> dict[str, str]:
    """The environment the issuer container would see, with its secret files laid in tmp_path.

    `external` supplies the content of Secrets the chart does not create (existingSecret).
    """
    env: dict[str, str] = {}
    for source in rendered.container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(rendered.one("ConfigMap", name)["data"])
    files = projected_files(rendered)
    for var in rendered.container["env"]:
        assert "valueFrom" not in var, f"{var['name']}: secrets arrive as files"
        value = var["value"]
        if var["name"].endswith("_FILE"):
            secret, key = files[value]
            if rendered.find("Secret", secret) is not None:
                content = rendered.secret_data(secret)[key]
            else:
                assert external is not None and (secret, key) in external, (secret, key)
                content = external[(secret, key)]
            local = tmp_path / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(content, encoding="utf-8")
            value = str(local)
        env[var["name"]] = value
    # Files of ConfigMap volumes (the claim policy), laid in tmp_path too.
    for path, (config_map, key) in config_map_files(rendered).items():
        if rendered.find("ConfigMap", config_map) is not None:
            content = rendered.one("ConfigMap", config_map)["data"][key]
        else:
            assert external is not None and (config_map, key) in external, (config_map, key)
            content = external[(config_map, key)]
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content, encoding="utf-8")
        env = {name: str(local) if value == path else value for name, value in env.items()}
    return env


def projected_files(rendered: Rendered) -> dict[str, tuple[str, str]]:
    """Path in the container -> (Secret name, key), for the projected `secrets` volume."""
    mount = next(m for m in rendered.container["volumeMounts"] if m["name"] == "secrets")
    volumes = rendered.issuer["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == "secrets")
    files = {}
    for source in volume["projected"]["sources"]:
        for item in source["secret"]["items"]:
            path = f"{mount['mountPath']}/{item['path']}"
            files[path] = (source["secret"]["name"], item["key"])
    return files


def config_map_files(rendered: Rendered) -> dict[str, tuple[str, str]]:
    """Path in the container -> (ConfigMap name, key), for every ConfigMap volume mounted."""
    volumes = {v["name"]: v for v in rendered.issuer["spec"]["template"]["spec"]["volumes"]}
    files = {}
    for mount in rendered.container["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        for item in source["items"]:
            files[f"{mount['mountPath']}/{item['path']}"] = (source["name"], item["key"])
    return files


def test_default_install_configures_an_issuer_the_app_accepts(
    default_render: Rendered, tmp_path: Path
) -> None:
    settings = load_settings(issuer_environment(default_render, tmp_path))
    assert settings.issuer == "https://idp.example.com/_services/token"
    assert settings.redis_url is not None
    assert settings.redis_url.startswith("redis://:")
    assert settings.redis_url.endswith(f"@{RELEASE}-redis:6379/0")
    assert len(settings.ci_secrets) == 1 and len(settings.ci_secrets[0]) == 48
    assert len(settings.key_encryption_keys) == 1 and len(settings.key_encryption_keys[0]) == 48
    assert settings.ci_secrets[0] != settings.key_encryption_keys[0]
    assert settings.subject_claims == ("repo", "ref", "event")
    assert settings.log_format == "json"


def test_ha_values_configure_an_issuer_the_app_accepts(ha_render: Rendered, tmp_path: Path) -> None:
    external = {
        ("idp-secrets", "IDP_CI_SECRET"): f"{'1' * 32},{'2' * 32}",
        ("idp-secrets", "IDP_KEY_ENCRYPTION_KEY"): "k" * 40,
        ("idp-redis-url", "url"): "rediss://:token@master.example.cache.amazonaws.com:6379/0",
    }
    settings = load_settings(issuer_environment(ha_render, tmp_path, external))
    assert settings.issuer == "https://ci.example.com/_services/token"
    assert settings.redis_url == external[("idp-redis-url", "url")]
    assert settings.ci_secrets == ("1" * 32, "2" * 32)
    assert settings.signing_alg == "ES256"
    assert settings.token_ttl == 600
    assert settings.audiences == ("sts.amazonaws.com",)
    assert settings.aws_session_tags == ("repo", "event")


def test_settings_reach_the_configmap(tmp_path: Path) -> None:
    rendered = render(
        {
            "config": {
                "signingAlg": "RS512",
                "rotationPeriod": 43200,
                "tokenMaxTTL": 7200,
                "subjectClaims": ["repo", "event", "image"],
                "jwksMaxAge": 120,
                "logFormat": "text",
                "accessLog": True,
                "extra": {"IDP_CLOCK_SKEW": 30},
            }
        }
    )
    env = issuer_environment(rendered, tmp_path)
    assert env["IDP_ACCESS_LOG"] == "1"
    settings = load_settings(env)
    assert settings.signing_alg == "RS512"
    assert settings.rotation_period == 43200
    assert settings.token_max_ttl == 7200
    assert settings.subject_claims == ("repo", "event", "image")
    assert settings.jwks_max_age == 120
    assert settings.clock_skew == 30
    assert settings.log_format == "text"
    assert settings.audiences is None
    assert settings.aws_session_tags == ()
    # Safe defaults reach the pod: rate limits on, the Ingress trusted as the one proxy.
    assert settings.rate_limit_step == "30/minute"
    assert settings.rate_limit_ci == "100/second"
    assert settings.trusted_proxies == 1


@pytest.mark.parametrize(
    ("values", "proxies", "step"),
    [
        ({"ingress": {"enabled": False}}, 0, "30/minute"),
        ({"config": {"trustedProxies": 2, "rateLimits": {"step": "off"}}}, 2, None),
        (
            {"config": {"trustedProxies": 0, "rateLimits": {"step": "5/minute;100/hour"}}},
            0,
            "5/minute;100/hour",
        ),
    ],
)
def test_rate_limits_and_proxies_reach_the_configmap(
    tmp_path: Path, values: dict[str, Any], proxies: int, step: str | None
) -> None:
    settings = load_settings(issuer_environment(render(values), tmp_path))
    assert settings.trusted_proxies == proxies
    assert settings.rate_limit_step == step


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"rateLimits": {"step": "lots"}}},
        {"config": {"rateLimits": {"step": 30}}},
        {"config": {"trustedProxies": -1}},
        {"config": {"trustedProxies": "1"}},
    ],
)
def test_bad_rate_limit_values_are_refused_by_the_schema(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)


# --- secrets -----------------------------------------------------------------------------

SUPPLIED = {
    "ci": "ci-secret-0123456789-abcdef-0123456789",
    "kek": "kek-0123456789-0123456789-0123456789",
    "redis_password": "s3cr3t-redis-pw",
}

REDIS_URLS_WITH_PASSWORD = [
    f"redis://:{SUPPLIED['redis_password']}@redis.data.svc:6379/0",
    f"rediss://idp:{SUPPLIED['redis_password']}@master.cache.amazonaws.com:6380/0",
    f"redis://redis.data.svc:6379/0?password={SUPPLIED['redis_password']}",
]


def configmaps_text(rendered: Rendered) -> str:
    return repr([m["data"] for m in rendered.all("ConfigMap")])


@pytest.mark.parametrize("url", REDIS_URLS_WITH_PASSWORD)
def test_no_secret_is_ever_in_a_configmap_or_the_pod_spec(url: str, tmp_path: Path) -> None:
    rendered = render(
        {
            "secrets": {"ciSecret": SUPPLIED["ci"], "keyEncryptionKey": SUPPLIED["kek"]},
            "redis": {"url": url},
        }
    )
    visible = configmaps_text(rendered) + repr(rendered.all("Deployment"))
    for secret in SUPPLIED.values():
        assert secret not in visible
    assert not any(
        re.search("SECRET|PASSWORD|ENCRYPTION|REDIS_URL", key) for key in rendered.config
    )
    # ... and they are in Secrets, from where the pod reads them as files
    settings = load_settings(issuer_environment(rendered, tmp_path))
    assert settings.ci_secrets == (SUPPLIED["ci"],)
    assert settings.key_encryption_keys == (SUPPLIED["kek"],)
    assert settings.redis_url == url
    assert "Deployment" in rendered.kinds() and rendered.find("Deployment", "idp-redis") is None


def test_a_redis_url_without_password_is_plain_configuration(tmp_path: Path) -> None:
    url = "rediss://master.idp.abc123.use1.cache.amazonaws.com:6379/0"
    rendered = render({"redis": {"url": url}})
    assert rendered.config["IDP_REDIS_URL"] == url
    assert rendered.find("Secret", "idp-redis") is None
    assert "IDP_REDIS_URL_FILE" not in {v["name"] for v in rendered.container["env"]}
    assert load_settings(issuer_environment(rendered, tmp_path)).redis_url == url


SENTINEL = {
    "redis": {
        "sentinels": ["redis-node-0.redis-headless:26379", "redis-node-1.redis-headless:26380"],
        "sentinelMaster": "mymaster",
        "sentinelAuth": {
            "existingSecret": "redis",
            "passwordKey": "redis-password",
            "sentinelPasswordKey": "sentinel-password",
        },
    }
}


def test_sentinels_configure_the_issuer_and_no_bundled_redis(tmp_path: Path) -> None:
    rendered = render(SENTINEL)
    assert rendered.config["IDP_REDIS_SENTINELS"] == (
        "redis-node-0.redis-headless:26379,redis-node-1.redis-headless:26380"
    )
    assert rendered.config["IDP_REDIS_SENTINEL_MASTER"] == "mymaster"
    assert "IDP_REDIS_URL" not in rendered.config
    assert rendered.find("Deployment", "idp-redis") is None
    assert rendered.find("Secret", "idp-redis") is None
    # The passwords arrive as files from the operator's Secret, never in the ConfigMap.
    external = {("redis", "redis-password"): "pw", ("redis", "sentinel-password"): "spw"}
    settings = load_settings(issuer_environment(rendered, tmp_path, external))
    assert settings.redis_url is None and settings.redis_sentinel is not None
    assert settings.redis_sentinel.sentinels == (
        ("redis-node-0.redis-headless", 26379),
        ("redis-node-1.redis-headless", 26380),
    )
    assert (settings.redis_sentinel.password, settings.redis_sentinel.sentinel_password) == (
        "pw",
        "spw",
    )
    # The issuer may reach the sentinels' ports and the master's, nothing else but DNS.
    policy = rendered.one("NetworkPolicy", RELEASE)
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53, 6379, 26379, 26380}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"sentinels": ["s:26379"]}}, "redis.sentinelMaster is not"),
        (
            {"redis": {"sentinels": ["s:26379"], "sentinelMaster": "m", "url": "redis://r"}},
            "redis.sentinels and redis.url",
        ),
        ({"redis": {"sentinels": ["s 1"], "sentinelMaster": "m"}}, "is not host:port"),
    ],
)
def test_bad_sentinel_values_are_refused(values: dict[str, Any], message: str) -> None:
    assert message in render_error(values)


def test_generated_secrets_are_long_random_and_kept_by_lookup(default_render: Rendered) -> None:
    data = default_render.secret_data(RELEASE)
    assert set(data) == {"IDP_CI_SECRET", "IDP_KEY_ENCRYPTION_KEY"}
    for value in data.values():
        assert re.fullmatch(r"[A-Za-z0-9]{48}", value)
    # Offline, `lookup` finds nothing, so a second render generates new values; in a cluster
    # the template reads them back from the live Secret (see _helpers.tpl idp.liveSecretValue).
    assert render().secret_data(RELEASE) != data
    helpers = chart_file("templates", "_helpers.tpl").read_text(encoding="utf-8")
    assert 'lookup "v1" "Secret" .ctx.Release.Namespace .name' in helpers


TWO_CI_SECRETS = "one-secret-0123456789abcdef-0123456789,two-secret-0123456789abcdef-0123456789"


def test_supplied_secrets_are_used_verbatim() -> None:
    rendered = render(
        {"secrets": {"ciSecret": TWO_CI_SECRETS, "keyEncryptionKey": SUPPLIED["kek"]}}
    )
    assert rendered.secret_data(RELEASE) == {
        "IDP_CI_SECRET": TWO_CI_SECRETS,
        "IDP_KEY_ENCRYPTION_KEY": SUPPLIED["kek"],
    }


def test_existing_secret_is_used_and_none_is_created() -> None:
    rendered = render({"secrets": {"existingSecret": "my-idp-secrets"}})
    assert rendered.find("Secret", RELEASE) is None
    sources = {name for name, _ in projected_files(rendered).values()}
    assert "my-idp-secrets" in sources


def test_a_short_key_encryption_key_is_refused() -> None:
    message = render_error({"secrets": {"keyEncryptionKey": f"{'x' * 40},too-short"}})
    assert "secrets.keyEncryptionKey holds a key shorter than 32 characters" in message


def test_a_short_ci_secret_is_refused() -> None:
    # The issuer refuses it at start-up; the chart says so at install, not in a crash loop.
    message = render_error({"secrets": {"ciSecret": f"{'x' * 40},too-short"}})
    assert "secrets.ciSecret holds a secret shorter than 32 characters" in message


def test_secret_names_cannot_be_smuggled_into_the_configmap() -> None:
    message = render_error({"config": {"extra": {"IDP_CI_SECRET": "x"}}})
    assert "config.extra.IDP_CI_SECRET would put a secret in the ConfigMap" in message


def test_bundled_redis_requires_its_password(default_render: Rendered) -> None:
    data = default_render.secret_data("idp-redis")
    password = data["redis-password"]
    assert re.fullmatch(r"[A-Za-z0-9]{48}", password)
    assert data["auth.conf"] == f"requirepass {password}\n"
    assert data["IDP_REDIS_URL"] == f"redis://:{password}@idp-redis:6379/0"
    redis = default_render.one("Deployment", "idp-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["redis-server"]
    # The config file holding requirepass comes first, as redis-server wants it.
    assert container["args"][0] == "/etc/redis/auth.conf"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/redis")
    volume = next(
        v for v in redis["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["secret"]["secretName"] == "idp-redis"
    assert password not in repr(redis)


# --- Redis and replicas ------------------------------------------------------------------


def test_replicas_without_redis_are_refused() -> None:
    message = render_error({"replicaCount": 2, **NO_REDIS})
    assert "replicaCount=2 needs Redis: replicas cannot share the file key store" in message


def test_an_autoscaler_without_redis_is_refused() -> None:
    message = render_error({"replicaCount": 1, "autoscaling": {"enabled": True}, **NO_REDIS})
    assert "autoscaling.maxReplicas=6 needs Redis" in message


def test_ha_values_without_their_redis_are_refused() -> None:
    values = deep_merge(ha_values(), {"redis": {"existingSecret": ""}})
    assert "autoscaling.maxReplicas=10 needs Redis" in render_error(values)


def test_autoscaler_bounds_are_checked() -> None:
    message = render_error({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}})
    assert "autoscaling.minReplicas=5 is above autoscaling.maxReplicas=3" in message


def test_redis_url_and_existing_secret_together_are_refused() -> None:
    message = render_error({"redis": {"url": "redis://r:6379/0", "existingSecret": "r"}})
    assert "redis.url and redis.existingSecret are both set" in message


def test_one_replica_without_redis_keeps_its_keys_in_a_writable_volume(tmp_path: Path) -> None:
    rendered = render(SINGLE_FILE_STORE)
    assert {m["metadata"]["name"] for m in rendered.all("Deployment")} == {RELEASE}
    assert rendered.find("Secret", "idp-redis") is None
    assert "PodDisruptionBudget" not in rendered.kinds()
    deployment = rendered.issuer
    assert deployment["spec"]["replicas"] == 1
    # Never two pods on one key store, not even during a rollout.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    keys_dir = rendered.config["IDP_KEYS_DIR"]
    # The emptyDir (world-writable root) is mounted above the keys folder, which the issuer
    # then creates 0700 itself; it refuses a keys folder others may write to.
    mount = mount_at(rendered.container, str(Path(keys_dir).parent))
    assert not mount.get("readOnly", False)
    assert volume_named(rendered, mount["name"]) == {"name": mount["name"], "emptyDir": {}}
    assert "IDP_REDIS_URL" not in rendered.config
    settings = load_settings(issuer_environment(rendered, tmp_path))
    assert settings.redis_url is None
    assert str(settings.keys_dir) == keys_dir == "/var/lib/idp/keys"
    assert "every new pod" in rendered.notes


def test_the_file_store_can_keep_its_keys_on_a_claim() -> None:
    rendered = render({**SINGLE_FILE_STORE, "keysPersistence": {"enabled": True}})
    claim = rendered.one("PersistentVolumeClaim", "idp-keys")
    mount = mount_at(rendered.container, "/var/lib/idp/keys")
    volume = volume_named(rendered, mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    existing = render(
        {**SINGLE_FILE_STORE, "keysPersistence": {"enabled": True, "existingClaim": "mine"}}
    )
    assert existing.find("PersistentVolumeClaim", "idp-keys") is None
    assert volume_named(existing, mount["name"])["persistentVolumeClaim"]["claimName"] == "mine"


def test_with_redis_the_pods_roll_without_dropping_below_their_count(
    each_render: Rendered,
) -> None:
    strategy = each_render.issuer["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert "IDP_KEYS_DIR" not in each_render.config


def test_default_is_two_replicas_with_the_bundled_redis(default_render: Rendered) -> None:
    assert default_render.issuer["spec"]["replicas"] == 2
    redis = default_render.one("Deployment", "idp-redis")
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7-alpine"
    args = container["args"]
    # Durable by default: closed builds must survive a Redis restart.
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert default_render.one("PersistentVolumeClaim", "idp-redis")
    service = default_render.one("Service", "idp-redis")
    assert labels_match(service["spec"]["selector"], pod_labels(redis))
    assert not labels_match(service["spec"]["selector"], pod_labels(default_render.issuer))


def test_bundled_redis_without_persistence_saves_nothing() -> None:
    rendered = render({"redis": {"bundled": {"persistence": {"enabled": False}}}})
    (container,) = rendered.one("Deployment", "idp-redis")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert "PersistentVolumeClaim" not in rendered.kinds()


def test_bundled_redis_persistence() -> None:
    rendered = render({"redis": {"bundled": {"persistence": {"enabled": True, "size": "2Gi"}}}})
    claim = rendered.one("PersistentVolumeClaim", "idp-redis")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    redis = rendered.one("Deployment", "idp-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    data = volume_named(rendered, mount_at(container, "/data")["name"], redis)
    assert data["persistentVolumeClaim"]["claimName"] == "idp-redis"


def test_ha_values_use_the_external_redis_and_an_autoscaler(ha_render: Rendered) -> None:
    assert {m["metadata"]["name"] for m in ha_render.all("Deployment")} == {RELEASE}
    assert ha_render.find("Secret", "idp-redis") is None
    assert ha_render.find("Service", "idp-redis") is None
    # The HPA owns the size: a replicas field would fight it on every upgrade.
    assert "replicas" not in ha_render.issuer["spec"]
    hpa = ha_render.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == ha_render.issuer["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert ha_render.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    affinity = ha_render.issuer["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert labels_match(term["labelSelector"]["matchLabels"], pod_labels(ha_render.issuer))


def test_default_spreads_replicas_and_guards_them_with_a_budget(default_render: Rendered) -> None:
    affinity = default_render.issuer["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (preferred,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert labels_match(term["labelSelector"]["matchLabels"], pod_labels(default_render.issuer))
    pdb = default_render.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels(default_render.issuer))


# --- the issuer's pod --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "prefix"),
    [
        ("https://idp.example.com/_services/token", "/_services/token"),
        ("https://ci.example.com/a/b", "/a/b"),
        ("https://idp.example.com", ""),
    ],
)
def test_probes_follow_the_issuer_path(issuer: str, prefix: str) -> None:
    rendered = render({"issuer": issuer})
    container = rendered.container
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {
        "startupProbe": f"{prefix}/healthz",
        "livenessProbe": f"{prefix}/healthz",
        "readinessProbe": f"{prefix}/readyz",
    }
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert port_names[http["port"]] == 8080


def test_every_container_has_probes_and_resources(each_render: Rendered) -> None:
    for _, container in containers(each_render):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in container, (container["name"], probe)
        assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
        assert "memory" in container["resources"]["limits"]


def test_every_pod_runs_restricted(each_render: Rendered) -> None:
    """Pod Security Standards 'restricted', plus a read-only root filesystem."""
    for workload, container in containers(each_render):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert "hostNetwork" not in pod and "hostPID" not in pod
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert pod["securityContext"].get("runAsUser", 1) != 0


def test_ids_can_be_left_to_the_platform() -> None:
    rendered = render(VARIANTS["platform-assigned-ids"])
    pod = rendered.issuer["spec"]["template"]["spec"]["securityContext"]
    assert pod == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def test_writable_paths_are_volumes(default_render: Rendered) -> None:
    """A read-only root filesystem needs /tmp (gunicorn) and the metrics folder mounted."""
    container = default_render.container
    assert volume_named(default_render, mount_at(container, "/tmp")["name"])["emptyDir"]
    metrics_dir = default_render.config["PROMETHEUS_MULTIPROC_DIR"]
    assert metrics_dir == "/var/run/idp/metrics"
    assert "emptyDir" in volume_named(default_render, mount_at(container, metrics_dir)["name"])
    assert mount_at(container, "/etc/idp/secrets")["readOnly"] is True


def test_the_container_runs_idp_serve_on_8080() -> None:
    rendered = render({"workers": 3})
    container = rendered.container
    assert "command" not in container  # the image's entrypoint, `idp`
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "3"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    service = rendered.one("Service", RELEASE)
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    assert labels_match(service["spec"]["selector"], pod_labels(rendered.issuer))


def test_the_image_is_the_projects(default_render: Rendered) -> None:
    import tomllib

    from tests.support import ROOT

    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.metadata["appVersion"] == version
    assert default_render.container["image"] == f"registry.example.com/idp:{version}"
    digest = "sha256:" + "a" * 64
    pinned = render({"image": {"digest": digest}})
    assert pinned.container["image"] == f"registry.example.com/idp@{digest}"


def test_config_changes_roll_the_pods() -> None:
    before = render().issuer["spec"]["template"]["metadata"]["annotations"]
    after = render({"config": {"tokenTTL": 600}}).issuer["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert before["checksum/config"] != after["checksum/config"]


# --- the issuer URL ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("http://idp.example.com/_services/token", "is not https: AWS trusts only https"),
        ("idp.example.com/_services/token", "is not https"),
        ("https://idp.example.com/_services/token/", "ends with '/'"),
        ("https://idp.example.com/t?x=1", "has a query or fragment"),
        ("https://user:pw@idp.example.com/t", "carries credentials"),
    ],
)
def test_a_bad_issuer_is_refused(issuer: str, message: str) -> None:
    assert message in render_error({"issuer": issuer})


def test_http_issuer_only_with_the_explicit_development_switch() -> None:
    rendered = render(
        {"issuer": "http://idp.dev.local/_services/token", "allowInsecureIssuer": True}
    )
    assert rendered.config["IDP_ISSUER"] == "http://idp.dev.local/_services/token"
    assert "AWS will not trust it" in rendered.notes


# --- Ingress: only the public paths ------------------------------------------------------

PUBLIC = [
    "/.well-known/openid-configuration",
    "/.well-known/jwks",
    "/id-token",
]
PRIVATE = [
    "/request-tokens",
    "/builds/42",
    "/builds",
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known",
    "/",
]
VELA = "/api/v1/repos/octo/app/builds/7/id_token"


def routed(ingress: Manifest, host: str, path: str) -> bool:
    """Whether the Ingress sends `path` on `host` to a backend, by the Ingress API's rules.

    ImplementationSpecific paths are taken as ingress-nginx takes them with use-regex: a
    regular expression anchored at the start.
    """
    for rule in ingress["spec"]["rules"]:
        if rule["host"] != host:
            continue
        for entry in rule["http"]["paths"]:
            want, kind = entry["path"], entry["pathType"]
            if kind == "Exact" and path == want:
                return True
            if kind == "Prefix":
                parts, prefix = path.split("/"), want.rstrip("/").split("/")
                if parts[: len(prefix)] == prefix:
                    return True
            if kind == "ImplementationSpecific" and re.match(want, path):
                return True
    return False


def test_ingress_publishes_only_the_public_paths(each_render: Rendered) -> None:
    ingress = each_render.one("Ingress")
    issuer = each_render.config["IDP_ISSUER"]
    host = issuer.split("/")[2]
    prefix = "/" + issuer.split("/", 3)[3]
    for path in PUBLIC:
        assert routed(ingress, host, prefix + path), path
    assert routed(ingress, host, VELA)
    for path in PRIVATE:
        assert not routed(ingress, host, prefix + path), path
    assert not routed(ingress, "other.example.com", prefix + "/.well-known/jwks")
    for entry in ingress["spec"]["rules"][0]["http"]["paths"]:
        assert entry["backend"]["service"] == {"name": RELEASE, "port": {"name": "http"}}


def test_ha_ingress_narrows_the_vela_path_on_a_shared_host(ha_render: Rendered) -> None:
    ingress = ha_render.one("Ingress")
    assert routed(ingress, "ci.example.com", VELA)
    # The Vela server's own API on the same host stays with the Vela server.
    for path in ["/api/v1/repos/octo/app", "/api/v1/repos/octo/app/builds/7", VELA + "/x"]:
        assert not routed(ingress, "ci.example.com", path), path


def test_ingress_terminates_tls_for_the_issuers_host(each_render: Rendered) -> None:
    ingress = each_render.one("Ingress")
    host = each_render.config["IDP_ISSUER"].split("/")[2]
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [host]
    assert tls["secretName"]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == [host]


def test_the_vela_path_can_be_left_out() -> None:
    ingress = render({"ingress": {"velaIdTokenPath": {"enabled": False}}}).one("Ingress")
    assert not routed(ingress, "idp.example.com", VELA)


# --- NetworkPolicy -----------------------------------------------------------------------


def issuer_policy(rendered: Rendered) -> dict[str, Any]:
    policy = rendered.one("NetworkPolicy", RELEASE)
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], pod_labels(rendered.issuer))
    spec: dict[str, Any] = policy["spec"]
    return spec


def test_network_policy_lets_in_only_the_ingress_controller_by_default(
    default_render: Rendered,
) -> None:
    spec = issuer_policy(default_render)
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                    }
                }
            ],
            "ports": [{"port": "http", "protocol": "TCP"}],
        }
    ]
    assert "no CI server can reach the issuer yet" in default_render.notes


def test_network_policy_never_opens_to_everyone(each_render: Rendered) -> None:
    for policy in each_render.all("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            # A rule without `from`, or a peer with no selector, would admit every pod.
            assert rule.get("from"), policy["metadata"]["name"]
            for peer in rule["from"]:
                assert any(peer.get(k) for k in ("namespaceSelector", "podSelector", "ipBlock"))


def test_network_policy_lets_in_the_ci_server_and_prometheus(ha_render: Rendered) -> None:
    peers = [rule["from"] for rule in issuer_policy(ha_render)["ingress"]]
    assert [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vela"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "vela-server"}},
        }
    ] in peers
    assert [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ] in peers
    assert "no CI server" not in ha_render.notes


def test_a_ci_server_in_the_release_namespace_is_one_pod_selector() -> None:
    rendered = render(
        {"networkPolicy": {"ciServer": {"podSelector": {"matchLabels": {"app": "vela"}}}}}
    )
    peers = [rule["from"] for rule in issuer_policy(rendered)["ingress"]]
    assert [{"podSelector": {"matchLabels": {"app": "vela"}}}] in peers


def test_egress_reaches_only_dns_and_redis(each_render: Rendered) -> None:
    spec = issuer_policy(each_render)
    dns, redis = spec["egress"]
    assert "to" not in dns and {p["port"] for p in dns["ports"]} == {53}
    assert redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
    if each_render.find("Deployment", "idp-redis"):
        redis_pods = pod_labels(each_render.one("Deployment", "idp-redis"))
        (peer,) = redis["to"]
        assert labels_match(peer["podSelector"]["matchLabels"], redis_pods)
    else:
        assert redis["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_egress_follows_the_redis_port_in_the_url() -> None:
    spec = issuer_policy(render({"redis": {"url": "rediss://cache.internal:6380/0"}}))
    assert spec["egress"][1] == {"ports": [{"port": 6380, "protocol": "TCP"}]}


def test_bundled_redis_admits_only_the_issuer(default_render: Rendered) -> None:
    policy = default_render.one("NetworkPolicy", "idp-redis")
    redis = default_render.one("Deployment", "idp-redis")
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert (
        peer["podSelector"]["matchLabels"]
        == default_render.issuer["spec"]["selector"]["matchLabels"]
    )
    assert policy["spec"]["egress"] == []


def test_network_policy_can_be_turned_off() -> None:
    assert "NetworkPolicy" not in render({"networkPolicy": {"enabled": False}}).kinds()


# --- helpers -----------------------------------------------------------------------------


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def mount_at(container: dict[str, Any], path: str) -> dict[str, Any]:
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    assert len(mounts) == 1, f"nothing mounted at {path}"
    return mounts[0]


def volume_named(rendered: Rendered, name: str, workload: Manifest | None = None) -> dict[str, Any]:
    workload = workload or rendered.issuer
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == name]
    return dict(volume)
