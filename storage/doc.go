// Package storage is pitr's one seam to object storage. Everything else
// (flush, merge, coordinator, restore, snapshot) reads and writes through
// the Storage interface; consumers should declare the one or two methods
// they need as their own small interface.
//
// # Contract
//
// Every implementation passes storagetest.Run, which pins the behaviour
// below on mem, file, MinIO (s3), Azurite (azblob) and fake-gcs-server (gs).
//
//   - Writes are atomic: Put, PutReader and CreateIfAbsent make the whole
//     object visible or nothing. A PutReader whose reader fails, yields a
//     byte count other than size, or whose ctx is cancelled leaves the
//     previous object (or no object) in place. On S3 an aborted multipart
//     upload may leave invisible parts behind; a bucket lifecycle rule
//     (AbortIncompleteMultipartUpload) cleans them up.
//   - List is flat (no directories) and in byte-wise lexical key order on
//     every backend, across pages. Keys are relative to the URL's prefix.
//   - GetRange(off, length): length < 0 reads to the end; a range reaching
//     past the end is truncated; off == size is empty; off > size and
//     off < 0 are ErrInvalidRange.
//   - Errors match sentinels with errors.Is: ErrNotFound (also for Delete
//     of a missing object), ErrAlreadyExists, ErrPermission, ErrInvalidKey,
//     ErrInvalidRange, and ErrTransient for failures worth retrying (5xx,
//     429/SlowDown, timeouts, refused/reset connections; see IsTransient).
//     The SDK's own error stays reachable with errors.As.
//   - Keys follow ValidateKey, which keeps every key storable verbatim on
//     every backend (no escaping, so other tools see the same names).
//     On file://, a key cannot also be a "directory" of other keys ("a"
//     and "a/b"); pitr's layout never does that.
//
// # URLs
//
// Open takes one of these; a path after the bucket becomes a key prefix.
// Unknown query parameters are an error.
//
//	s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:9000&region=us-east-1&use_path_style=true
//	    &access_key=ID&secret_key=SECRET[&session_token=T]
//	  Without access_key/secret_key the AWS SDK's default chain is used:
//	  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
//	  AWS_REGION, AWS_PROFILE / shared config, then instance roles.
//	  Region defaults to us-east-1.
//
//	gs://BUCKET/PREFIX[?endpoint=http://127.0.0.1:4443]
//	  endpoint (or env STORAGE_EMULATOR_HOST=host:port) talks to an
//	  emulator such as fake-gcs-server without authentication; otherwise
//	  Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
//	  the metadata server).
//
//	azblob://CONTAINER/PREFIX?endpoint=http://127.0.0.1:10000/devstoreaccount1
//	    &storage_account=NAME&account_key=KEY
//	  storage_account and account_key default to env AZURE_STORAGE_ACCOUNT
//	  and AZURE_STORAGE_KEY. Without endpoint the service URL is built as
//	  gocloud's azureblob does (query domain, protocol, localemu, cdn, or
//	  env AZURE_STORAGE_DOMAIN, _PROTOCOL, _IS_LOCAL_EMULATOR, _IS_CDN).
//	  Without a key, AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_SAS_TOKEN
//	  or azidentity's default credential are used.
//
//	file:///ABS/DIR   file://./REL/DIR
//	  The directory is created if missing.
//
//	mem://[LABEL][/PREFIX]
//	  A new, empty in-memory store per Open (two Opens never share data).
//
// # CreateIfAbsent per backend
//
// CreateIfAbsent first checks Exists (cheap, and the common "already
// there" answer), then writes conditionally:
//
//	s3      PutObject with "If-None-Match: *" (AWS S3 since 2024-08, MinIO).
//	        Always a single PutObject, never multipart. A 409
//	        ConditionalRequestConflict is transient. A server that ignores
//	        the header degrades to check-then-put, racy in that window.
//	gs      ifGenerationMatch=0 (storage.Conditions{DoesNotExist: true}).
//	azblob  Commit Block List with If-None-Match: *.
//	file    the fsynced temp file is hard-linked into place; link(2) fails
//	        if the name exists. Exact.
//	mem     a mutex around check and write. Exact.
//
// The suite races several goroutines on one key and requires exactly one
// winner; a second test bypasses the Exists check to prove the server
// itself enforces the condition (s3, gs, azblob).
//
// # GetVersion and PutIfMatch per backend
//
// A read-modify-write that must not lose a concurrent update (the
// coordinator's checkpoint/global, which must never go backwards across
// terms) reads with GetVersion and writes with PutIfMatch; a conflict
// (ErrConflict) means "read again and decide again". The server checks the
// condition in the same request that writes:
//
//	s3      version = ETag; PutObject with "If-Match: <etag>" (AWS S3 since
//	        2024-11, MinIO), or "If-None-Match: *" for NoVersion. Single
//	        PutObject. 412 PreconditionFailed and (If-Match on a missing
//	        object) 404 NoSuchKey are ErrConflict; 409
//	        ConditionalRequestConflict is transient. The pinned SDK has no
//	        PutObjectInput.IfMatch, so the header is middleware: a server
//	        that ignores it degrades to an unconditional Put.
//	gs      version = generation; ifGenerationMatch (storage.Conditions
//	        GenerationMatch, DoesNotExist for NoVersion).
//	azblob  version = ETag; Commit Block List with If-Match.
//	file    version = sha256 of the content; compare and rename under an
//	        exclusive flock(2) of a per-key file in .pitr-tmp/: exact
//	        between PutIfMatch callers, in one process or several on one
//	        local file system (not over NFS); a plain Put is not locked out.
//	mem     version = sha256 of the content; compare and write under the
//	        store's mutex. Exact.
//
// GetVersion reads the version before the data, so the token is never
// newer than the bytes returned: a write based on them can only fail, never
// overwrite a version the caller did not see. Content-hash versions do not
// tell two versions with equal bytes apart, which is harmless for the same
// reason. The suite checks a stale token, a token of a deleted object, a
// plain Put in between, and racers with one token (exactly one wins) on
// every backend against its real server.
//
// # Durability of file://
//
// The file backend does not use gocloud's fileblob, which in v0.38.0 does
// not fsync, lists in directory-walk order instead of key order, and has
// no conditional create. Writes go to ROOT/.pitr-tmp/, are fsynced,
// renamed (or linked) into place, and the directory is fsynced, as are
// directories created on the way.
//
// # Retries, rate limits, metrics
//
// Backends do not retry: the AWS and Azure SDK retries are switched off so
// that WithRetry is the single, tested policy (GCS's client still retries
// idempotent calls on its own). Cross-cutting behaviour is a wrapper, not a
// backend flag; the usual stack is
//
//	s, _ := storage.Open(ctx, url)
//	s = storage.WithRetry(s, storage.RetryOptions{Logger: log})
//	rl := storage.WithRateLimit(s, bytesPerSec, storage.RateLimitOptions{})
//	m, _ := storage.WithMetrics(rl, registerer, storage.MetricsOptions{})
//
// Retry sits below the rate limiter so that re-sent bytes are paid for.
// See Retry for what can be retried honestly (a non-seekable stream larger
// than RetryOptions.MaxBuffer cannot).
//
// # Credentials
//
// URL() and every error redact credentials: secret query parameters
// (secret_key, account_key, session_token, sig, ...), URL passwords, and
// the values of AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
// AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN, AZURE_CLIENT_SECRET and the
// AccountKey of AZURE_STORAGE_CONNECTION_STRING, wherever they appear in a
// message (including text a server echoes back). Use RedactURL before
// logging a URL that did not come from URL().
//
// # Testing
//
// storagetest.Run is the conformance suite; storagetest.StartMinIO,
// StartAzurite and StartFakeGCS start real servers on 127.0.0.1 (binaries
// from scripts/tools.sh in .tools/, or $PATH); storagetest.Faulty injects
// failures. Environment: CI (non-empty) or PITR_REQUIRE_BACKENDS=1 turn a
// missing server binary from a skip into a failure; PITR_TOOLS_DIR
// overrides the .tools directory; PITR_BIG=0 skips the 1 GiB MinIO test.
package storage
