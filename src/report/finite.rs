//! A check that a record holds no NaN or infinite number before it is written as JSON, which has
//! no way to write them (serde_json would write `null`, and the record would not read back).

use std::fmt::Display;

use anyhow::{bail, Result};
use serde::ser::{self, Serialize};

/// Errors naming the first non-finite number of `record` by its path (`result.history[3].1`).
pub fn check_finite<T: Serialize + ?Sized>(record: &T) -> Result<()> {
    let mut c = Checker::default();
    match record.serialize(&mut c) {
        Ok(()) => Ok(()),
        Err(Found(msg)) => bail!("{msg}"),
    }
}

#[derive(Default)]
struct Checker {
    path: Vec<String>,
    /// Next element index of each open sequence.
    index: Vec<usize>,
}

impl Checker {
    fn at(&self) -> String {
        let mut s = String::new();
        for p in &self.path {
            if !s.is_empty() && !p.starts_with('[') {
                s.push('.');
            }
            s.push_str(p);
        }
        if s.is_empty() {
            "the record".into()
        } else {
            format!("field {s}")
        }
    }

    fn within<T: Serialize + ?Sized>(&mut self, name: String, value: &T) -> Result<(), Found> {
        self.path.push(name);
        value.serialize(&mut *self)?;
        self.path.pop();
        Ok(())
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        let i = self.index.last().copied().unwrap_or(0);
        if let Some(last) = self.index.last_mut() {
            *last += 1;
        }
        self.within(format!("[{i}]"), value)
    }
}

#[derive(Debug)]
struct Found(String);

impl Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<T: Display>(msg: T) -> Self {
        Found(msg.to_string())
    }
}

macro_rules! accept {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name(self, _: $ty) -> Result<(), Found> { Ok(()) })*
    };
}

impl ser::Serializer for &mut Checker {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    accept!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
        serialize_str: &str, serialize_bytes: &[u8], serialize_unit_struct: &'static str);

    fn serialize_f32(self, v: f32) -> Result<(), Found> {
        self.serialize_f64(v as f64)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Found> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(Found(format!(
                "{} is {v}, which JSON cannot represent",
                self.at()
            )))
        }
    }
    fn serialize_none(self) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Found> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Found> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        self.within(variant.to_string(), value)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Found> {
        self.index.push(0);
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, Found> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Self, Found> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Found> {
        self.path.push(variant.to_string());
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Found> {
        self.path.push(String::new()); // replaced by each key
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Found> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, Found> {
        self.path.push(variant.to_string());
        Ok(self)
    }
}

/// Sequences, tuples and tuple structs: each element is the next index.
macro_rules! elements {
    ($($trait:ident :: $method:ident),+) => {$(
        impl ser::$trait for &mut Checker {
            type Ok = ();
            type Error = Found;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
                self.element(value)
            }
            fn end(self) -> Result<(), Found> {
                self.index.pop();
                Ok(())
            }
        }
    )+};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

impl ser::SerializeTupleVariant for &mut Checker {
    type Ok = ();
    type Error = Found;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        self.element(value)
    }
    fn end(self) -> Result<(), Found> {
        self.index.pop();
        self.path.pop();
        Ok(())
    }
}

impl ser::SerializeMap for &mut Checker {
    type Ok = ();
    type Error = Found;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Found> {
        let name = match serde_json::to_value(key) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(_) => "?".into(),
        };
        if let Some(last) = self.path.last_mut() {
            *last = name;
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Found> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Found> {
        self.path.pop();
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Checker {
    type Ok = ();
    type Error = Found;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        self.within(key.to_string(), value)
    }
    fn end(self) -> Result<(), Found> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Checker {
    type Ok = ();
    type Error = Found;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Found> {
        self.within(key.to_string(), value)
    }
    fn end(self) -> Result<(), Found> {
        self.path.pop();
        Ok(())
    }
}
