# Multi-stage build of a static p2pcat for running the rendezvous server.
#   docker build -t p2pcat .
#   docker run -p 3478-3479:3478-3479/udp -v p2pcat-data:/data p2pcat
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/p2pcat .

FROM scratch
COPY --from=build /out/p2pcat /p2pcat
USER 65534:65534
VOLUME /data
EXPOSE 3478/udp 3479/udp
ENTRYPOINT ["/p2pcat", "serve", "--listen", ":3478", "--data", "/data", "--log-format", "json"]
