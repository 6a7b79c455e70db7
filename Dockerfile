# One image for every Steplog server process (processors, API, one-shot setup jobs).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY steplog ./steplog
COPY schemas ./schemas
COPY producers ./producers
COPY processors ./processors
COPY projections ./projections
RUN pip install --no-cache-dir ".[server]"
ENTRYPOINT ["steplog"]
