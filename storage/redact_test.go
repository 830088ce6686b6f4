package storage_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/storage"
)

const secret = "SuperSecret+Value/42="

func TestRedactURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"s3://b/p?access_key=AK&secret_key=" + url.QueryEscape(secret) + "&region=r",
			"s3://b/p?access_key=REDACTED&region=r&secret_key=REDACTED"},
		{"azblob://c/p?account_key=" + url.QueryEscape(secret) + "&storage_account=acct",
			"azblob://c/p?account_key=REDACTED&storage_account=acct"},
		{"s3://user:" + url.QueryEscape(secret) + "@b/p", "s3://user:REDACTED@b/p"},
		{"https://h/x?sig=" + url.QueryEscape(secret) + "&se=2030", "https://h/x?se=2030&sig=REDACTED"},
		{"file:///data/backup", "file:///data/backup"},
		{"s3://b:bad:port/?secret_key=" + secret, "s3://REDACTED"},
		{"%zz" + secret, "invalid://REDACTED"},
	}
	for _, c := range cases {
		got := storage.RedactURL(c.in)
		require.Equal(t, c.want, got)
		require.NotContains(t, got, secret)
		require.NotContains(t, got, url.QueryEscape(secret))
	}
}

func TestOpenErrorsAreRedacted(t *testing.T) {
	ctx := context.Background()
	q := "secret_key=" + url.QueryEscape(secret)
	for _, raw := range []string{
		"s3://b:bad:port/p?access_key=AK&" + q,     // unparsable URL
		"s3://b/p?access_key=AK&" + q + "&bogus=1", // unknown parameter
		"s3://b/p?" + q, // key without id
		"s3://b/p?access_key=AK&" + q + "&endpoint=ftp://x",                                         // bad endpoint
		"azblob://c/p?account_key=" + url.QueryEscape(secret) + "&endpoint=http://127.0.0.1:1/acct", // no account name
		"gs://b/p?" + q,
		"nope://b/p?" + q,
	} {
		_, err := storage.Open(ctx, raw)
		require.Error(t, err, raw)
		require.NotContains(t, err.Error(), secret)
		require.NotContains(t, err.Error(), url.QueryEscape(secret))
		require.NotContains(t, err.Error(), "SuperSecret")
	}
}

// A server (or proxy) that echoes credentials in its error messages must
// not get them into our errors.
func TestServerEchoIsRedacted(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, `<?xml version="1.0"?><Error><Code>InternalError</Code><Message>echo: %s secret_key=%s</Message></Error>`,
			secret, url.QueryEscape(secret))
	}))
	defer srv.Close()
	s := open(t, "s3://b/p?use_path_style=true&region=us-east-1&access_key=AK&secret_key="+url.QueryEscape(secret)+
		"&endpoint="+url.QueryEscape(srv.URL))
	err := s.Put(context.Background(), "k", []byte("v"))
	require.Error(t, err)
	require.True(t, storage.IsTransient(err), "a 500 is transient: %v", err)
	require.Contains(t, err.Error(), "REDACTED", "the echo reached the message and was scrubbed")
	require.NotContains(t, err.Error(), secret)
	require.NotContains(t, err.Error(), "SuperSecret")
	require.NotContains(t, s.URL(), "SuperSecret")
	require.True(t, strings.HasPrefix(s.URL(), "s3://b/p?"))
}
