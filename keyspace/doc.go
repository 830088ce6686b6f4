// Package keyspace holds the two coordinates every part of pitr addresses
// data by: raw key ranges and TSO timestamps. It is a leaf (it imports the
// standard library only) so that agent, coordinator, flush, restore and the
// CLI share one definition of each instead of copies that drift, as ours
// had: five key-range types, two memcomparable codecs of which one dropped
// trailing bytes, and TSO helpers of which one rendered local time.
//
// Keys here are raw user keys unless a name says encoded. A range is
// half-open, [Start, End); an empty Start is the beginning of the key space
// (the empty key sorts first, so the two are the same bound) and an empty
// End is +inf. PD region boundaries and CDC requests use the memcomparable
// encoding of raw keys (TiKV's codec encode_bytes, TIKV-PROTOCOLS §1.8);
// EncodeBytes/DecodeBytes and the Key/Range variants convert.
//
// A TSO is PD's hybrid timestamp: the physical part is Unix milliseconds,
// shifted left by LogicalBits, and the low LogicalBits bits are a logical
// counter within the millisecond.
package keyspace
