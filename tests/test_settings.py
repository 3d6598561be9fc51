"""Tests of relay.settings: DESIGN's RELAY_* variables, derived region, errors, hidden secrets."""

from __future__ import annotations

import os
import traceback

import pytest

from relay.errors import ConfigError
from relay.settings import DEFAULT_WORKER_IDLE_POLL_MS, Settings

TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:stream-events"
ROLE_ARN = "arn:aws:iam::123456789012:role/relay-publisher"

# Distinctive secret values, so a leak anywhere is found by a substring search.
SNS_KEY = "AKIA-LEAK-CHECK-KEY-7f3a"
SNS_SECRET = "leak-check-secret-9b1c"
EXTERNAL_ID = "leak-check-external-id-2d4e"
WEBHOOK_SECRET = "leak-check-webhook-5e6f,leak-check-webhook-old-8a9b"
SECRETS = (SNS_KEY, SNS_SECRET, EXTERNAL_ID, WEBHOOK_SECRET)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> pytest.MonkeyPatch:
    """A clean environment: no RELAY_* variables and a cwd without a stray .env file."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def config_error(env: pytest.MonkeyPatch, **variables: str) -> ConfigError:
    """Set the variables, load, and return the ConfigError that must result."""
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError) as exc_info:
        Settings.load()
    return exc_info.value


def everything_said(error: BaseException) -> str:
    """All the text an operator could see for an error: str, repr and the printed traceback."""
    return "\n".join([str(error), repr(error), "".join(traceback.format_exception(error))])


# --- reading the environment -----------------------------------------------------------------


def test_defaults_without_any_variable(env: pytest.MonkeyPatch) -> None:
    """With nothing set: no Redis URL, topic, static credentials or size cap (the topic decides)."""
    settings = Settings.load()
    assert settings.redis_url is None
    assert settings.sns_topic_arn is None
    assert settings.sns_key is None
    assert settings.sns_secret is None
    assert settings.sns_role_arn is None
    assert settings.topic_region is None
    assert settings.metrics_port == 9191
    assert settings.max_message_bytes is None


def test_every_design_variable_is_read_from_the_environment(env: pytest.MonkeyPatch) -> None:
    """Each RELAY_* variable of DESIGN's contract lands in its setting."""
    # Given every documented variable set
    variables = {
        "RELAY_REDIS_URL": "rediss://redis.internal:6380/2",
        "RELAY_SNS_TOPIC_ARN": TOPIC_ARN,
        "RELAY_SNS_KEY": SNS_KEY,
        "RELAY_SNS_SECRET": SNS_SECRET,
        "RELAY_SNS_ROLE_ARN": ROLE_ARN,
        "RELAY_SNS_EXTERNAL_ID": EXTERNAL_ID,
        "RELAY_SNS_REGION": "us-west-2",
        "RELAY_SNS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAY_METRICS_PORT": "9300",
        "RELAY_MAX_MESSAGE_BYTES": "1048576",
    }
    for name, value in variables.items():
        env.setenv(name, value)
    # When the settings load
    settings = Settings.load()
    # Then each one is read
    assert settings.redis_url == "rediss://redis.internal:6380/2"
    assert settings.sns_topic_arn == TOPIC_ARN
    assert settings.sns_key is not None
    assert settings.sns_key.get_secret_value() == SNS_KEY
    assert settings.sns_secret is not None
    assert settings.sns_secret.get_secret_value() == SNS_SECRET
    assert settings.sns_role_arn == ROLE_ARN
    assert settings.sns_external_id is not None
    assert settings.sns_external_id.get_secret_value() == EXTERNAL_ID
    assert settings.sns_region == "us-west-2"
    assert settings.sns_endpoint_url == "http://127.0.0.1:4566"
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == WEBHOOK_SECRET
    assert settings.metrics_port == 9300
    assert settings.max_message_bytes == 1_048_576


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://h:6380", "unix:///tmp/r.sock"]
)
def test_redis_url_schemes_are_accepted(env: pytest.MonkeyPatch, url: str) -> None:
    """redis://, rediss:// and unix:// URLs are accepted as given."""
    env.setenv("RELAY_REDIS_URL", url)
    assert Settings.load().require_redis_url() == url


def test_a_dotenv_file_in_the_working_directory_is_read(
    env: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    """Variables in ./.env are read like environment variables."""
    # Given a .env file in the working directory
    dotenv = os.path.join(tmp_path, ".env")
    with open(dotenv, "w", encoding="utf-8") as handle:
        handle.write(f"RELAY_SNS_TOPIC_ARN={TOPIC_ARN}\nRELAY_METRICS_PORT=9400\n")
    # When the settings load with no variables in the environment
    settings = Settings.load()
    # Then the file's values are used
    assert settings.sns_topic_arn == TOPIC_ARN
    assert settings.metrics_port == 9400


def test_an_environment_variable_wins_over_the_dotenv_file(
    env: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    """A variable set in the environment overrides the same one in ./.env."""
    with open(os.path.join(tmp_path, ".env"), "w", encoding="utf-8") as handle:
        handle.write("RELAY_METRICS_PORT=9400\n")
    env.setenv("RELAY_METRICS_PORT", "9500")
    assert Settings.load().metrics_port == 9500


# --- region ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arn", "region"),
    [
        (TOPIC_ARN, "eu-west-1"),
        ("arn:aws:sns:us-east-1:123456789012:events.fifo", "us-east-1"),
        ("arn:aws-cn:sns:cn-north-1:123456789012:events", "cn-north-1"),
        ("arn:aws-us-gov:sns:us-gov-west-1:123456789012:events", "us-gov-west-1"),
    ],
)
def test_region_is_derived_from_the_topic_arn(
    env: pytest.MonkeyPatch, arn: str, region: str
) -> None:
    """Without RELAY_SNS_REGION, the topic's region is the ARN's."""
    env.setenv("RELAY_SNS_TOPIC_ARN", arn)
    assert Settings.load().topic_region == region


def test_sns_region_overrides_the_arn_region(env: pytest.MonkeyPatch) -> None:
    """RELAY_SNS_REGION wins over the region in the ARN."""
    env.setenv("RELAY_SNS_TOPIC_ARN", TOPIC_ARN)
    env.setenv("RELAY_SNS_REGION", "ap-southeast-2")
    assert Settings.load().topic_region == "ap-southeast-2"


# --- errors name the variable ----------------------------------------------------------------


@pytest.mark.parametrize(
    "arn",
    [
        pytest.param("not-an-arn", id="garbage"),
        pytest.param("arn:aws:sqs:eu-west-1:123456789012:queue", id="sqs"),
        pytest.param("arn:aws:sns:eu-west-1:12345678901:topic", id="11-digit-account"),
        pytest.param("arn:aws:sns:eu-west-1:123456789012:", id="no-topic-name"),
        pytest.param("arn:aws:sns:eu-west-1:123456789012:my topic", id="space-in-name"),
        pytest.param("arn:aws:sns:eu-west-1:123456789012:topic.fifo.fifo", id="double-fifo"),
    ],
)
def test_a_bad_topic_arn_is_a_config_error_naming_the_variable(
    env: pytest.MonkeyPatch, arn: str
) -> None:
    """A value that is not an SNS topic ARN raises ConfigError naming RELAY_SNS_TOPIC_ARN."""
    error = config_error(env, RELAY_SNS_TOPIC_ARN=arn)
    assert "RELAY_SNS_TOPIC_ARN" in str(error)


@pytest.mark.parametrize(
    "arn",
    [
        pytest.param(TOPIC_ARN + "\n", id="trailing-newline"),
        pytest.param("arn:aws:sns:eu-west-1:١٢٣٤٥٦٧٨٩٠١٢:topic", id="arabic-indic-digits"),
    ],
)
def test_a_near_miss_topic_arn_is_a_config_error(env: pytest.MonkeyPatch, arn: str) -> None:
    """A trailing newline or non-ASCII digits do not pass as an ARN (`$` and `\\d` are loose)."""
    error = config_error(env, RELAY_SNS_TOPIC_ARN=arn)
    assert "RELAY_SNS_TOPIC_ARN" in str(error)


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "redis:/x"])
def test_a_bad_redis_scheme_is_a_config_error_naming_the_variable(
    env: pytest.MonkeyPatch, url: str
) -> None:
    """A Redis URL without redis://, rediss:// or unix:// raises ConfigError naming it."""
    error = config_error(env, RELAY_REDIS_URL=url)
    assert "RELAY_REDIS_URL" in str(error)


def test_an_empty_redis_url_means_unset(env: pytest.MonkeyPatch) -> None:
    """RELAY_REDIS_URL set to "" (as compose files do) means unset, not an invalid URL."""
    env.setenv("RELAY_REDIS_URL", "")
    assert Settings.load().redis_url is None


def test_a_variable_of_spaces_only_means_unset_like_an_empty_one(
    env: pytest.MonkeyPatch,
) -> None:
    """ "  " for a number, a URL or an ARN is taken as unset (the default), not as a value to
    refuse; a value with text in it keeps being checked as before."""
    env.setenv("RELAY_WORKER_IDLE_POLL_MS", " ")
    env.setenv("RELAY_REDIS_URL", "  ")
    env.setenv("RELAY_SNS_TOPIC_ARN", "\t")
    settings = Settings.load()
    assert (settings.worker_idle_poll_ms, settings.redis_url, settings.sns_topic_arn) == (
        DEFAULT_WORKER_IDLE_POLL_MS,
        None,
        None,
    )
    env.setenv("RELAY_WORKER_IDLE_POLL_MS", " 5 ")
    assert "RELAY_WORKER_IDLE_POLL_MS" in str(config_error(env))


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({"RELAY_SNS_KEY": SNS_KEY}, id="key-without-secret"),
        pytest.param({"RELAY_SNS_SECRET": SNS_SECRET}, id="secret-without-key"),
    ],
)
def test_half_a_static_credential_is_a_config_error_naming_both_variables(
    env: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    """A key without a secret, or a secret without a key, raises ConfigError naming both."""
    error = config_error(env, **variables)
    assert "RELAY_SNS_KEY" in str(error)
    assert "RELAY_SNS_SECRET" in str(error)


def test_an_external_id_without_a_role_is_a_config_error_naming_both(
    env: pytest.MonkeyPatch,
) -> None:
    """RELAY_SNS_EXTERNAL_ID without RELAY_SNS_ROLE_ARN raises ConfigError naming both."""
    error = config_error(env, RELAY_SNS_EXTERNAL_ID=EXTERNAL_ID)
    assert "RELAY_SNS_EXTERNAL_ID" in str(error)
    assert "RELAY_SNS_ROLE_ARN" in str(error)


@pytest.mark.parametrize("value", ["1023", "1048577", "0", "lots"])
def test_max_message_bytes_out_of_range_is_a_config_error_naming_the_variable(
    env: pytest.MonkeyPatch, value: str
) -> None:
    """RELAY_MAX_MESSAGE_BYTES outside 1,024..1,048,576 (or not a number) raises ConfigError."""
    error = config_error(env, RELAY_MAX_MESSAGE_BYTES=value)
    assert "RELAY_MAX_MESSAGE_BYTES" in str(error)


@pytest.mark.parametrize("value", ["1024", "1048576"])
def test_max_message_bytes_at_the_range_ends_is_accepted(
    env: pytest.MonkeyPatch, value: str
) -> None:
    """RELAY_MAX_MESSAGE_BYTES of exactly 1,024 or 1,048,576 loads."""
    env.setenv("RELAY_MAX_MESSAGE_BYTES", value)
    assert Settings.load().max_message_bytes == int(value)


def test_a_non_numeric_metrics_port_is_a_config_error_naming_the_variable(
    env: pytest.MonkeyPatch,
) -> None:
    """RELAY_METRICS_PORT that is not a number raises ConfigError naming it."""
    error = config_error(env, RELAY_METRICS_PORT="ninety")
    assert "RELAY_METRICS_PORT" in str(error)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_WEBHOOK_DEDUP_TTL_S", "0"),
        ("RELAY_INGEST_MAX_BODY_BYTES", "0"),
        ("RELAY_INGEST_MAX_BODY_BYTES", "-1"),
        ("RELAY_INGEST_MAX_BACKLOG_EVENTS", "0"),
        ("RELAY_METRICS_PORT", "0"),
        ("RELAY_METRICS_PORT", "65536"),
        ("RELAY_REDIS_TIMEOUT_S", "0"),
        ("RELAY_REDIS_CONNECT_TIMEOUT_S", "-1"),
        ("RELAY_WORKER_NICE", "-1"),
        ("RELAY_WORKER_NICE", "20"),
        ("RELAY_WORKER_IDLE_POLL_MS", "9"),
        ("RELAY_WORKER_IDLE_POLL_MS", "10001"),
        ("RELAY_LOG_LEVEL", "chatty"),
    ],
)
def test_a_number_out_of_its_range_or_an_unknown_level_is_a_config_error(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Values the relay cannot run with stop it at start, naming the variable (a dedup TTL of 0
    would make every webhook's store fail after writing)."""
    error = config_error(env, **{variable: value})
    assert str(error).startswith(f"invalid configuration: {variable}: ")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_REDIS_URL", "redis://127.0.0.1:notaport"),
        ("RELAY_REDIS_URL", "redis://:leak-check-password@[::1"),
        ("RELAY_SNS_ENDPOINT_URL", "notaurl"),
        ("RELAY_SNS_ENDPOINT_URL", "ftp://127.0.0.1:4575"),
        ("RELAY_SNS_ENDPOINT_URL", "http://127.0.0.1:port"),
        ("RELAY_SNS_ENDPOINT_URL", "http://"),
        ("RELAY_SNS_REGION", "US-EAST-1"),
        ("RELAY_SNS_REGION", "us-east"),
        ("RELAY_SNS_REGION", "us east 1"),
    ],
)
def test_urls_and_regions_the_clients_could_not_use_are_config_errors(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A Redis URL redis-py cannot read, an SNS endpoint that is not http(s)://host, a region
    that is not a region: refused at start (a bad endpoint used to fail every bundle later),
    and the value itself, which may hold a password, is not echoed."""
    error = str(config_error(env, **{variable: value}))
    assert error.startswith(f"invalid configuration: {variable}: ")
    assert "leak-check-password" not in error


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_REDIS_URL", "rediss://:pw@redis.internal:6380/2?ssl_cert_reqs=none"),
        ("RELAY_REDIS_URL", "redis://[::1]:6379"),
        ("RELAY_SNS_ENDPOINT_URL", "https://sns.us-gov-west-1.amazonaws.com"),
        ("RELAY_SNS_ENDPOINT_URL", "http://localhost:4566/"),
        ("RELAY_SNS_REGION", "us-gov-west-1"),
        ("RELAY_SNS_REGION", "ap-southeast-2"),
        ("RELAY_SNS_REGION", "eusc-de-east-1"),
    ],
)
def test_real_urls_and_regions_load(env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """TLS URLs with options, IPv6 hosts, GovCloud endpoints and regions pass the checks."""
    env.setenv(variable, value)
    Settings.load()


def test_numbers_at_the_ends_of_their_ranges_load(env: pytest.MonkeyPatch) -> None:
    """TTL, sizes and backlog of 1, ports 1 and 65,535, niceness 0 and 19, idle polls of 10 and
    10,000 ms; levels in any case."""
    for variables, expected in [
        (
            {
                "RELAY_WEBHOOK_DEDUP_TTL_S": "1",
                "RELAY_INGEST_MAX_BODY_BYTES": "1",
                "RELAY_INGEST_MAX_BACKLOG_EVENTS": "1",
                "RELAY_METRICS_PORT": "1",
                "RELAY_WORKER_NICE": "0",
                "RELAY_WORKER_IDLE_POLL_MS": "10",
                "RELAY_LOG_LEVEL": "debug",
            },
            (1, 1, 1, 1, 0, 10, "DEBUG"),
        ),
        (
            {
                "RELAY_METRICS_PORT": "65535",
                "RELAY_WORKER_NICE": "19",
                "RELAY_WORKER_IDLE_POLL_MS": "10000",
                "RELAY_LOG_LEVEL": "Error",
            },
            (1, 1, 1, 65_535, 19, 10_000, "ERROR"),
        ),
        ({"RELAY_LOG_LEVEL": "warn"}, (1, 1, 1, 65_535, 19, 10_000, "WARNING")),
        ({"RELAY_LOG_LEVEL": "fatal"}, (1, 1, 1, 65_535, 19, 10_000, "CRITICAL")),
    ]:
        for name, value in variables.items():
            env.setenv(name, value)
        settings = Settings.load()
        assert (
            settings.webhook_dedup_ttl_s,
            settings.ingest_max_body_bytes,
            settings.ingest_max_backlog_events,
            settings.metrics_port,
            settings.worker_nice,
            settings.worker_idle_poll_ms,
            settings.log_level,
        ) == expected


def test_worker_nice_is_read_from_the_dotenv_file_like_every_setting(
    env: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    """RELAY_WORKER_NICE in ./.env sets the workers' niceness (default 0)."""
    assert Settings.load().worker_nice == 0
    with open(os.path.join(tmp_path, ".env"), "w", encoding="utf-8") as handle:
        handle.write("RELAY_WORKER_NICE=7\n")
    assert Settings.load().worker_nice == 7


def test_every_bad_variable_is_named_in_one_error(env: pytest.MonkeyPatch) -> None:
    """Several bad variables are all named in the one ConfigError."""
    error = config_error(env, RELAY_REDIS_URL="http://x", RELAY_MAX_MESSAGE_BYTES="5")
    assert "RELAY_REDIS_URL" in str(error)
    assert "RELAY_MAX_MESSAGE_BYTES" in str(error)


# --- secrets never shown ---------------------------------------------------------------------


def test_secrets_never_appear_in_the_settings_repr_str_or_dump(env: pytest.MonkeyPatch) -> None:
    """Key, secret, external id and webhook secret are hidden in repr, str and a JSON dump."""
    for name, value in {
        "RELAY_SNS_KEY": SNS_KEY,
        "RELAY_SNS_SECRET": SNS_SECRET,
        "RELAY_SNS_ROLE_ARN": ROLE_ARN,
        "RELAY_SNS_EXTERNAL_ID": EXTERNAL_ID,
        "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }.items():
        env.setenv(name, value)
    settings = Settings.load()
    shown = "\n".join([repr(settings), str(settings), settings.model_dump_json()])
    for secret in SECRETS:
        for part in secret.split(","):
            assert part not in shown


def test_a_password_in_the_redis_url_never_appears_in_the_settings_repr_or_dumps(
    env: pytest.MonkeyPatch,
) -> None:
    """A Redis AUTH password inside RELAY_REDIS_URL is a secret too, hidden from repr, str and
    dumps."""
    env.setenv("RELAY_REDIS_URL", "rediss://relay:leak-check-redis-pw@redis.internal:6380/0")
    settings = Settings.load()
    assert settings.require_redis_url().endswith("@redis.internal:6380/0")
    assert "leak-check-redis-pw" not in repr(settings)
    assert "leak-check-redis-pw" not in str(settings)
    # A dump says where Redis is, with the password masked.
    assert settings.model_dump()["redis_url"] == "rediss://relay:***@redis.internal:6380/0"
    assert "leak-check-redis-pw" not in settings.model_dump_json()
    env.setenv("RELAY_REDIS_URL", "redis://redis.internal:6379/2")
    assert Settings.load().model_dump()["redis_url"] == "redis://redis.internal:6379/2"


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({"RELAY_SNS_KEY": SNS_KEY}, id="key-without-secret"),
        pytest.param({"RELAY_SNS_SECRET": SNS_SECRET}, id="secret-without-key"),
        pytest.param({"RELAY_SNS_EXTERNAL_ID": EXTERNAL_ID}, id="external-id-without-role"),
        pytest.param(
            {
                "RELAY_SNS_KEY": SNS_KEY,
                "RELAY_SNS_SECRET": SNS_SECRET,
                "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "RELAY_SNS_TOPIC_ARN": "not-an-arn",
            },
            id="secrets-set-and-another-variable-bad",
        ),
    ],
)
def test_secrets_never_appear_in_a_config_error(
    env: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    """Even when the error is about a secret, its value is not in the error or its traceback."""
    error = config_error(env, **variables)
    said = everything_said(error)
    for secret in SECRETS:
        for part in secret.split(","):
            assert part not in said


# --- require_* -------------------------------------------------------------------------------


def test_require_topic_arn_without_it_names_the_variable(env: pytest.MonkeyPatch) -> None:
    """require_topic_arn raises ConfigError naming RELAY_SNS_TOPIC_ARN when it is unset."""
    with pytest.raises(ConfigError, match="RELAY_SNS_TOPIC_ARN"):
        Settings.load().require_topic_arn()


def test_require_topic_arn_returns_the_arn(env: pytest.MonkeyPatch) -> None:
    """require_topic_arn returns the ARN when it is set."""
    env.setenv("RELAY_SNS_TOPIC_ARN", TOPIC_ARN)
    assert Settings.load().require_topic_arn() == TOPIC_ARN


def test_require_redis_url_without_it_names_the_variable(env: pytest.MonkeyPatch) -> None:
    """require_redis_url raises ConfigError naming RELAY_REDIS_URL when it is unset."""
    with pytest.raises(ConfigError, match="RELAY_REDIS_URL"):
        Settings.load().require_redis_url()
