package storage

import (
	"net/url"
	"os"
	"regexp"
	"strings"
)

const redacted = "REDACTED"

// secretParams are URL query parameters whose values are credentials, in
// our URLs and in the SDKs' request URLs (presigned S3, Azure SAS).
var secretParams = []string{
	"access_key", "secret_key", "session_token", "account_key", "sas_token",
	"sig", "signature", "token", "password", "credential",
	"x-amz-signature", "x-amz-credential", "x-amz-security-token",
}

var secretParamRE = regexp.MustCompile(`(?i)\b(` + strings.Join(quoteAll(secretParams), "|") + `)=[^&\s"'<>]+`)

// secretEnv are environment variables that hold credentials; their values
// are scrubbed from every error a backend returns.
var secretEnv = []string{
	"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
	"AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_SECRET",
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = regexp.QuoteMeta(s)
	}
	return out
}

// redactor scrubs known secret values and secret-looking query parameters
// from strings. The zero value and nil scrub only the parameters.
type redactor struct {
	secrets []string
}

func newRedactor(secrets ...string) *redactor {
	r := &redactor{}
	for _, name := range secretEnv {
		secrets = append(secrets, os.Getenv(name))
		if name == "AZURE_STORAGE_CONNECTION_STRING" {
			for _, part := range strings.Split(os.Getenv(name), ";") {
				if k, v, ok := strings.Cut(part, "="); ok && strings.EqualFold(k, "AccountKey") {
					secrets = append(secrets, v)
				}
			}
		}
	}
	for _, s := range secrets {
		// Very short values would scrub innocent text and are no secret.
		if len(s) >= 4 {
			r.secrets = append(r.secrets, s, url.QueryEscape(s), url.PathEscape(s))
		}
	}
	return r
}

func (r *redactor) redact(s string) string {
	if r != nil {
		for _, sec := range r.secrets {
			s = strings.ReplaceAll(s, sec, redacted)
		}
	}
	return secretParamRE.ReplaceAllString(s, "${1}="+redacted)
}

// RedactURL returns rawURL with its password and every credential query
// parameter replaced by "REDACTED". A URL that does not parse is reduced to
// its scheme, so a malformed URL cannot leak a secret either.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		scheme, _, _ := strings.Cut(rawURL, "://")
		if len(scheme) > 16 || strings.ContainsAny(scheme, "?&=/@") {
			scheme = "invalid"
		}
		return scheme + "://" + redacted
	}
	return redactParsedURL(u)
}

func redactParsedURL(u *url.URL) string {
	c := *u
	if c.User != nil {
		if _, ok := c.User.Password(); ok {
			c.User = url.UserPassword(c.User.Username(), redacted)
		}
	}
	q := c.Query()
	changed := false
	for k := range q {
		for _, p := range secretParams {
			if strings.EqualFold(k, p) {
				q.Set(k, redacted)
				changed = true
			}
		}
	}
	if changed {
		c.RawQuery = q.Encode()
	}
	return c.String()
}
