package logfile

import (
	"fmt"

	"github.com/apache/arrow/go/v14/parquet"
	"github.com/apache/arrow/go/v14/parquet/metadata"
	"github.com/apache/arrow/go/v14/parquet/schema"
)

// Column indexes, in schema order.
const (
	colKey = iota
	colCommitTS
	colStartTS
	colOp
	colValue
	colOldValue
	numCols
)

// Footer key-value metadata (see doc.go).
const (
	kvFormatVersion = "pitr.format_version"
	kvSortOrder     = "pitr.sort_order"
	kvRowGroups     = "pitr.row_groups"
	kvFooterCRC     = "pitr.footer_crc32c"

	sortOrder = "key ASC, commit_ts DESC"
	// DataFormatVersion is the data file format this build writes.
	DataFormatVersion = 1
)

type colSpec struct {
	name string
	typ  parquet.Type
	rep  parquet.Repetition
}

var columns = [numCols]colSpec{
	colKey:      {"key", parquet.Types.ByteArray, parquet.Repetitions.Required},
	colCommitTS: {"commit_ts", parquet.Types.Int64, parquet.Repetitions.Required},
	colStartTS:  {"start_ts", parquet.Types.Int64, parquet.Repetitions.Required},
	colOp:       {"op", parquet.Types.Int32, parquet.Repetitions.Required},
	colValue:    {"value", parquet.Types.ByteArray, parquet.Repetitions.Optional},
	colOldValue: {"old_value", parquet.Types.ByteArray, parquet.Repetitions.Optional},
}

func fileSchema() *schema.GroupNode {
	fields := make(schema.FieldList, numCols)
	for i, c := range columns {
		n, err := schema.NewPrimitiveNode(c.name, c.rep, c.typ, -1, -1)
		if err != nil {
			panic(err) // static schema
		}
		fields[i] = n
	}
	return schema.MustGroup(schema.NewGroupNode("schema", parquet.Repetitions.Required, fields, -1))
}

// checkSchema verifies that a file's schema is exactly ours.
func checkSchema(md *metadata.FileMetaData) error {
	s := md.Schema
	if s == nil || s.NumColumns() != numCols || s.Root().NumFields() != numCols {
		return fmt.Errorf("schema has %d columns, want %d", s.NumColumns(), numCols)
	}
	for i, want := range columns {
		c := s.Column(i)
		if c.Name() != want.name || c.Path() != want.name || c.PhysicalType() != want.typ ||
			c.MaxRepetitionLevel() != 0 || c.SchemaNode().RepetitionType() != want.rep {
			return fmt.Errorf("column %d is %s %s, want %s %s", i, c.Path(), c.PhysicalType(), want.name, want.typ)
		}
	}
	return nil
}
