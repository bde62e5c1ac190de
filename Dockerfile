# One image for every service: SERVICES picks what a container hosts (k8s/ runs one Deployment per service).
FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    PORT=8080 \
    WEB_PORT=8081 \
    DABBA_DATA_DIR=/tmp/dabba
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json tsconfig.json ./
COPY gen ./gen
COPY services ./services
USER node
EXPOSE 8080 8081
# npm start: node --max-semi-space-size=64 --import tsx services/main.ts (SIGTERM drains, then exits 0)
CMD ["node", "--max-semi-space-size=64", "--import", "tsx", "services/main.ts"]
