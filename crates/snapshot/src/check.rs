//! A serializer that writes nothing and only checks that a value has a faithful JSON form.
//!
//! `serde_json` writes NaN and infinities as `null`, which silently changes the value on
//! the next restore. Running this check on each value before it is written lets a save
//! reject the entry (naming its key) instead of corrupting it.

use std::fmt;

use serde::ser::{self, Impossible, Serialize};

/// Why a value cannot be written to JSON faithfully.
#[derive(Debug)]
pub(crate) struct Unfaithful(pub(crate) String);

impl fmt::Display for Unfaithful {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unfaithful {}

impl ser::Error for Unfaithful {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

/// The deepest nesting of arrays and objects a value may have: restore parses each entry
/// with `serde_json`, which refuses a 128th level, and the entry object is one level
/// itself, so a value may nest 126 levels (127 brackets in all).
pub(crate) const MAX_VALUE_DEPTH: usize = 126;

/// The name `serde_json` gives the struct that carries a `RawValue`'s text.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Checks `value` without producing output.
pub(crate) fn check<T: ?Sized + Serialize>(value: &T) -> Result<(), Unfaithful> {
    value.serialize(Checker::default())
}

fn too_deep() -> Unfaithful {
    Unfaithful(format!(
        "the value nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep, deeper than a restore can read"
    ))
}

/// The deepest bracket nesting of the JSON text `raw` (brackets inside strings do not count).
fn text_depth(raw: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0_usize, 0, false, false);
    for byte in raw.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    deepest
}

fn check_float(value: f64) -> Result<(), Unfaithful> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Unfaithful(format!(
            "the value contains the float {value}, which JSON cannot represent (serde_json would write it as null)"
        )))
    }
}

/// Walks a value; every method only recurses, counts nesting, or checks floats.
///
/// `depth` is the number of JSON arrays and objects around the value being checked, as
/// `serde_json` writes it: a sequence, map or struct is one level, a newtype variant
/// (`{"Variant": value}`) one, a tuple or struct variant two.
#[derive(Default, Clone, Copy)]
struct Checker {
    depth: usize,
    /// Set on a `RawValue`'s struct, whose one field is JSON text.
    raw: bool,
}

impl Checker {
    /// The checker for what sits `levels` brackets inside this one.
    fn enter(self, levels: usize) -> Result<Self, Unfaithful> {
        let depth = self.depth + levels;
        if depth > MAX_VALUE_DEPTH {
            return Err(too_deep());
        }
        Ok(Self { depth, raw: false })
    }
}

impl ser::Serializer for Checker {
    type Ok = ();
    type Error = Unfaithful;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_f32(self, value: f32) -> Result<(), Unfaithful> {
        check_float(f64::from(value))
    }
    fn serialize_f64(self, value: f64) -> Result<(), Unfaithful> {
        check_float(value)
    }
    fn serialize_char(self, _: char) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Unfaithful> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unfaithful> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unfaithful> {
        value.serialize(self.enter(1)?)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Unfaithful> {
        self.enter(1)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Unfaithful> {
        self.enter(1)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Unfaithful> {
        self.enter(1)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Unfaithful> {
        self.enter(2)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Unfaithful> {
        self.enter(1)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, Unfaithful> {
        if name == RAW_VALUE_TOKEN {
            // Its one field is the JSON text, which sits where the struct does.
            return Ok(Self {
                depth: self.depth,
                raw: true,
            });
        }
        self.enter(1)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Unfaithful> {
        self.enter(2)
    }
}

impl Checker {
    /// The checker for the elements of the compound this one stands for.
    fn inner(self) -> Self {
        Self {
            depth: self.depth,
            raw: false,
        }
    }
}

impl ser::SerializeSeq for Checker {
    type Ok = ();
    type Error = Unfaithful;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unfaithful> {
        value.serialize(self.inner())
    }
    fn end(self) -> Result<(), Unfaithful> {
        Ok(())
    }
}

impl ser::SerializeTuple for Checker {
    type Ok = ();
    type Error = Unfaithful;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unfaithful> {
        value.serialize(self.inner())
    }
    fn end(self) -> Result<(), Unfaithful> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Checker {
    type Ok = ();
    type Error = Unfaithful;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unfaithful> {
        value.serialize(self.inner())
    }
    fn end(self) -> Result<(), Unfaithful> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Checker {
    type Ok = ();
    type Error = Unfaithful;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unfaithful> {
        value.serialize(self.inner())
    }
    fn end(self) -> Result<(), Unfaithful> {
        Ok(())
    }
}

impl ser::SerializeMap for Checker {
    type Ok = ();
    type Error = Unfaithful;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Unfaithful> {
        key.serialize(KeyChecker)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unfaithful> {
        value.serialize(self.inner())
    }
    fn end(self) -> Result<(), Unfaithful> {
        Ok(())
    }
}

impl ser::SerializeStruct for Checker {
    type Ok = ();
    type Error = Unfaithful;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unfaithful> {
        if self.raw {
            // A `RawValue` is already JSON text: its nesting is in the text.
            if let Ok(serde_json::Value::String(text)) = serde_json::to_value(value)
                && self.depth + text_depth(&text) > MAX_VALUE_DEPTH
            {
                return Err(too_deep());
            }
            return Ok(());
        }
        value.serialize(self.inner())
    }
    fn end(self) -> Result<(), Unfaithful> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Checker {
    type Ok = ();
    type Error = Unfaithful;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unfaithful> {
        value.serialize(self.inner())
    }
    fn end(self) -> Result<(), Unfaithful> {
        Ok(())
    }
}

/// Checks a map key: JSON object keys are strings, so only values `serde_json` turns into
/// a string (strings, chars, integers, bools, unit variants) are accepted.
struct KeyChecker;

fn not_a_key(kind: &str) -> Unfaithful {
    Unfaithful(format!(
        "the value contains a map whose key is {kind}; JSON object keys must be strings (or integers, bools, chars)"
    ))
}

impl ser::Serializer for KeyChecker {
    type Ok = ();
    type Error = Unfaithful;
    type SerializeSeq = Impossible<(), Unfaithful>;
    type SerializeTuple = Impossible<(), Unfaithful>;
    type SerializeTupleStruct = Impossible<(), Unfaithful>;
    type SerializeTupleVariant = Impossible<(), Unfaithful>;
    type SerializeMap = Impossible<(), Unfaithful>;
    type SerializeStruct = Impossible<(), Unfaithful>;
    type SerializeStructVariant = Impossible<(), Unfaithful>;

    fn serialize_bool(self, _: bool) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), Unfaithful> {
        Err(not_a_key("a float"))
    }
    fn serialize_f64(self, _: f64) -> Result<(), Unfaithful> {
        Err(not_a_key("a float"))
    }
    fn serialize_char(self, _: char) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unfaithful> {
        Err(not_a_key("a byte array"))
    }
    fn serialize_none(self) -> Result<(), Unfaithful> {
        Err(not_a_key("None"))
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Unfaithful> {
        Err(not_a_key("an Option"))
    }
    fn serialize_unit(self) -> Result<(), Unfaithful> {
        Err(not_a_key("()"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unfaithful> {
        Err(not_a_key("a unit struct"))
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), Unfaithful> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unfaithful> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unfaithful> {
        Err(not_a_key("an enum variant with data"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unfaithful> {
        Err(not_a_key("a sequence"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unfaithful> {
        Err(not_a_key("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unfaithful> {
        Err(not_a_key("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unfaithful> {
        Err(not_a_key("an enum variant with data"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unfaithful> {
        Err(not_a_key("a map"))
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unfaithful> {
        Err(not_a_key("a struct"))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unfaithful> {
        Err(not_a_key("an enum variant with data"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::check;

    #[test]
    fn finite_values_and_string_keys_pass() {
        let map: BTreeMap<String, Vec<f64>> = [("a".to_string(), vec![1.5, -0.0])].into();
        assert!(check(&map).is_ok());
        let integer_keys: BTreeMap<u32, &str> = [(1, "one")].into();
        assert!(check(&integer_keys).is_ok());
    }

    #[test]
    fn non_finite_floats_fail() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let error = check(&vec![Some(1.0), Some(bad)]).unwrap_err();
            assert!(error.0.contains("float"), "{error}");
        }
        assert!(check(&f32::NAN).is_err());
    }

    #[test]
    fn composite_map_keys_fail() {
        let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let error = check(&map).unwrap_err();
        assert!(error.0.contains("a tuple"), "{error}");
    }
}
