# One image for every Steplog server process (processors, web service, one-shot setup jobs).

# The dashboard, built by Vite from frontend/ (locked by package-lock.json) into
# steplog/server/dashboard/; the Python image gets the built files only, no Node.
FROM node:20-slim AS dashboard
WORKDIR /app/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend ./
RUN npm run build

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY steplog ./steplog
COPY schemas ./schemas
COPY producers ./producers
COPY processors ./processors
COPY projections ./projections
COPY --from=dashboard /app/steplog/server/dashboard ./steplog/server/dashboard
RUN pip install --no-cache-dir ".[server,otel]"
ENTRYPOINT ["steplog"]
