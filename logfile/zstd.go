package logfile

import (
	"runtime"
	"sync"
	_ "unsafe" // go:linkname

	"github.com/apache/arrow/go/v14/parquet/compress"
	"github.com/klauspost/compress/zstd"
)

// arrow's zstd codec (v14) builds a new zstd encoder for every page it
// compresses: window-sized history and match tables allocated and cleared
// per page, a third of the writer's CPU and most of its garbage. Its codec
// registry is unexported, so we reach it by linkname and install a codec
// that keeps one encoder per level. The frames are the same standard zstd
// frames; only the writer's cost changes. If a future arrow renames the
// registry the build fails here, loudly; TestZstdCodecInstalled checks the
// swap took.
//
//go:linkname arrowCodecs github.com/apache/arrow/go/v14/parquet/compress.codecs
var arrowCodecs map[compress.Compression]compress.Codec

type pooledZstd struct {
	compress.Codec // arrow's, for everything but EncodeLevel
}

var zstdEncoders sync.Map // zstd.EncoderLevel → *zstd.Encoder

// zstdConcurrency bounds the encoders per level (each holds a few MiB of
// tables); more concurrent writers wait for one.
var zstdConcurrency = min(runtime.GOMAXPROCS(0), 4)

func (pooledZstd) EncodeLevel(dst, src []byte, level int) []byte {
	lv := zstd.SpeedDefault
	if level != compress.DefaultCompressionLevel {
		lv = zstd.EncoderLevelFromZstd(level)
	}
	e, ok := zstdEncoders.Load(lv)
	if !ok {
		ne, err := zstd.NewWriter(nil, zstd.WithZeroFrames(true), zstd.WithEncoderLevel(lv), zstd.WithEncoderConcurrency(zstdConcurrency))
		if err != nil {
			panic(err) // static options
		}
		e, _ = zstdEncoders.LoadOrStore(lv, ne)
	}
	return e.(*zstd.Encoder).EncodeAll(src, dst[:0])
}

func init() {
	arrowCodecs[compress.Codecs.Zstd] = pooledZstd{arrowCodecs[compress.Codecs.Zstd]}
}
