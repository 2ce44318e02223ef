import imagedsl as dsl

app = (
    dsl.image("python:3.12-slim")
    .arg("HF_TOKEN")
    .env(TOKENIZERS_PARALLELISM="false")
    .env(DB_PASSWORD_FILE="/run/secrets/db_password")
    .run(
        "python -c \"print('download')\"",
        mounts=[dsl.secret("hf_token", env="HF_TOKEN")],
    )
    .user("10001")
    .cmd("python")
)
